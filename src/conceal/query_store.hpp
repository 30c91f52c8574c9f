// The in-process query store's fingerprints and inverted index (Blacklight's
// hash table), used by src/conceal/memory_stores.cpp. Internal: not installed.
#pragma once

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "parry/conceal/query_monitor.hpp"

namespace parry::conceal {

namespace detail {

// Asks the kernel for transparent huge pages over a large array's storage:
// the index is read at random, and with 4 KiB pages nearly every access of a
// large store also misses the TLB. Pages touched before the call keep their size.
template <class T>
inline void advise_huge_pages(const std::vector<T>& v) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t{2} << 20;
  const uintptr_t start = reinterpret_cast<uintptr_t>(v.data());
  const uintptr_t begin = (start + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (start + v.capacity() * sizeof(T)) & ~(kHuge - 1);
  if (end > begin) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);  // advice only
#else
  (void)v;
#endif
}

// The stored fingerprints and the inverted index, guarded by the in-process
// store's mutex.
//
// Images live in a ring of slots (FIFO eviction). Slot s owns the postings
// s·P … s·P + P − 1 (P = hashes_kept × number of indexes); a posting holds
// its key (a window hash, or for the per-client index the hash mixed with the
// client id) and the next older posting of the same key. The index is an
// open-addressing table (linear probing, backward-shift deletion) of 16-byte
// cells: a key, the newest posting of that key and the number of its live
// postings, so each key's postings form a list from newest to oldest and one
// cache line answers a lookup. Evicting the oldest image removes the oldest posting of
// each of its keys: the key's cell goes when that posting is also its newest,
// and the older end of a list needs no unlinking, because a walk stops as soon
// as the image ids stop decreasing (a slot reused by a newer image, or a cycle
// back into it). Memory per stored image and index: N postings of 16 bytes
// (key, next, image id), table cells of 16 bytes at a load between 0.53 and
// 0.8 (the table never grows beyond what a full store needs), a 64-byte Bloom
// filter of the image's keys, and 12 bytes of slot data.
//
// A large store is read at random, so nearly every access misses the caches
// and, on a virtual machine, the TLB. Two things follow:
// - The lookups of a query, the steps of its list walks and the checks of its
//   candidates are issued together (all loads started, then the reads), so
//   the misses overlap instead of queueing one after the other.
// - Eviction is logical at once and physical in batches. An image older than
//   the newest `capacity` is dead: walks stop at it (postings along a list
//   grow older), so matching never sees it. Up to `spare` dead images keep
//   their slots and postings; when no free slot is left they are removed
//   together, their keys visited in table order, so the table's pages are
//   each visited in order once per batch (measured at 1M stored: eviction
//   went from 27.6 to 12.6 µs per query, of which sorting is 2.9).
struct MemoryQueryIndex {
  static constexpr uint32_t kNone = std::numeric_limits<uint32_t>::max();
  static constexpr double kMaxLoad = 0.8;
  static constexpr size_t kBloomWords = 8;  // 512 bits per image and index

  // Posting ids are 32-bit (kNone is the largest).
  static constexpr int64_t kMaxPostings = std::numeric_limits<uint32_t>::max() - 1;

  // Slots beyond the capacity that hold dead images until a batch removes
  // them: about 3 % of the capacity, at most 1,024, at least 1, and never so
  // many that the postings outgrow their 32-bit ids (QueryMonitor keeps
  // capacity × per_slot at least one slot below that).
  static int64_t spare_slots(int64_t capacity, int64_t per_slot) {
    const int64_t spare = std::min<int64_t>(1024, std::max<int64_t>(1, capacity / 32));
    return std::max<int64_t>(1, std::min(spare, kMaxPostings / per_slot - capacity));
  }

  MemoryQueryIndex(int64_t capacity, int64_t per_slot, int64_t kept)
      : capacity(capacity),
        slots(capacity + spare_slots(capacity, per_slot)),
        per_slot(per_slot),
        kept(kept),
        // The table never needs more cells than this: there are at most
        // slots × per_slot distinct keys at once.
        max_cells(static_cast<size_t>(std::ceil(static_cast<double>(slots * per_slot) / kMaxLoad)) + 1),
        slot_divisor(~uint64_t{0} / static_cast<uint64_t>(per_slot) + 1) {}

  // Table ------------------------------------------------------------------
  struct Cell {
    uint64_t key;     // 0 = empty
    uint32_t head;    // newest posting of the key
    uint32_t length;  // live postings of the key
  };
  static_assert(sizeof(Cell) == 16, "four cells per cache line");

  // Fingerprint hashes are the numerically largest of each image, so they
  // crowd the top of the 64-bit range: mix them (MurmurHash3's finaliser)
  // before mapping onto the table (Lemire's multiply-shift range reduction).
  size_t home(uint64_t key) const {
    key ^= key >> 33;
    key *= 0xff51afd7ed558ccdULL;
    key ^= key >> 33;
    key *= 0xc4ceb9fe1a85ec53ULL;
    key ^= key >> 33;
    return static_cast<size_t>((static_cast<unsigned __int128>(key) * cells.size()) >> 64);
  }
  size_t next_cell(size_t i) const { return i + 1 == cells.size() ? 0 : i + 1; }

  // Starts reading the cache line at `address`: a plain load whose value is
  // discarded, not a prefetch instruction. On the 2-core AMD EPYC virtual
  // machine this was measured on (1M stored, another process running), a
  // query's 50 table lookups took 21 µs after prefetch instructions and 11 µs
  // after such loads: the prefetches that miss the TLB hardly overlapped,
  // while independent loads overlap in the out-of-order core.
  template <class T>
  static void touch(const T* address) {
    uint64_t value;
    std::memcpy(&value, address, sizeof value);
    asm volatile("" : : "r"(value));
  }
  void touch_home(uint64_t key) const {
    if (!cells.empty()) touch(&cells[home(key)]);
  }

  // The cell holding `key`, or cells.size() if absent.
  size_t find(uint64_t key) const {
    if (cells.empty()) return 0;
    for (size_t i = home(key);; i = next_cell(i)) {
      if (cells[i].key == key) return i;
      if (cells[i].key == 0) return cells.size();
    }
  }

  void grow() {
    const size_t count = std::min(max_cells, std::max<size_t>(64, cells.size() + cells.size() / 2));
    std::vector<Cell> old_cells;
    old_cells.reserve(count);
    detail::advise_huge_pages(old_cells);
    old_cells.assign(count, Cell{0, kNone, 0});
    old_cells.swap(cells);
    for (const Cell& cell : old_cells) {
      if (cell.key == 0) continue;
      size_t j = home(cell.key);
      while (cells[j].key != 0) j = next_cell(j);
      cells[j] = cell;
    }
  }

  void erase_cell(size_t i) {
    size_t j = i;
    for (;;) {
      j = next_cell(j);
      if (cells[j].key == 0) break;
      const size_t h = home(cells[j].key);
      const bool stays = i <= j ? (i < h && h <= j) : (i < h || h <= j);
      if (stays) continue;
      cells[i] = cells[j];
      i = j;
    }
    cells[i] = Cell{0, kNone, 0};
    --entries;
  }

  void add_posting(uint64_t key, uint32_t posting) {
    posting_key[posting] = key;
    size_t cell = find(key);
    if (cell == cells.size()) {
      if (cells.size() < max_cells && static_cast<double>(entries + 1) > kMaxLoad * static_cast<double>(cells.size())) {
        grow();
      }
      cell = home(key);
      while (cells[cell].key != 0) cell = next_cell(cell);
      cells[cell] = Cell{key, kNone, 0};
      ++entries;
    }
    links[posting] = Link{cells[cell].head, static_cast<uint32_t>(slot_id[slot_of(posting)])};
    cells[cell].head = posting;
    ++cells[cell].length;
    const uint32_t slot = posting / static_cast<uint32_t>(per_slot);
    const uint32_t index = (posting % static_cast<uint32_t>(per_slot)) / static_cast<uint32_t>(kept);
    uint64_t* filter = &bloom[(slot * static_cast<size_t>(per_slot / kept) + index) * kBloomWords];
    for (const uint32_t bit : bloom_bits(key)) filter[bit >> 6] |= uint64_t{1} << (bit & 63);
    ++postings;
  }

  // Removes a posting of a dead image. Its key's postings that are still
  // in the index are all of dead images or newer: the cell goes when the
  // posting is the key's newest (the others of a batch then find no cell).
  void remove_posting(uint64_t key, uint32_t posting) {
    --postings;
    const size_t cell = find(key);
    if (cell == cells.size()) return;
    if (cells[cell].head == posting) {
      erase_cell(cell);
    } else {
      --cells[cell].length;
    }
  }

  // Whether the image in `slot` is dead once `newest` is stored.
  bool dead(uint32_t slot, uint64_t newest) const { return slot_id[slot] + static_cast<uint64_t>(capacity) <= newest; }

  // Removes every dead image (given the newest stored id) from the index and
  // frees its slot, keys in table order.
  void remove_dead(uint64_t newest) {
    removals.clear();
    size_t freed = 0;
    for (size_t s = first_held; held > 0 && dead(static_cast<uint32_t>(s), newest); s = (s + 1) % slots) {
      const uint32_t base = static_cast<uint32_t>(s) * static_cast<uint32_t>(per_slot);
      for (int64_t j = 0; j < per_slot; ++j) {
        const uint64_t key = posting_key[base + j];
        if (key != 0) removals.push_back(Removal{home(key), key, base + static_cast<uint32_t>(j)});  // 0: unused
      }
      first_held = (s + 1) % slots;
      --held;
      ++freed;
    }
    if (freed == 0) return;
    std::sort(removals.begin(), removals.end(), [](const Removal& a, const Removal& b) { return a.cell < b.cell; });
    // Here, walking the table in ascending order, prefetch instructions 16
    // keys ahead measured faster than loads (10 against 13 ms per batch of
    // 51,200 keys).
    constexpr size_t kAhead = 16;
    for (size_t i = 0; i < removals.size(); ++i) {
      if (i + kAhead < removals.size()) __builtin_prefetch(&cells[removals[i + kAhead].cell]);
      remove_posting(removals[i].key, removals[i].posting);
    }
    // Clear the freed slots' keys and filters (they are reused next).
    const size_t words = static_cast<size_t>(per_slot / kept) * kBloomWords;
    for (size_t k = 0, s = (first_held + slots - freed) % slots; k < freed; ++k, s = (s + 1) % slots) {
      std::fill_n(posting_key.begin() + static_cast<int64_t>(s) * per_slot, per_slot, 0);
      std::fill_n(bloom.begin() + static_cast<int64_t>(s * words), words, 0);
      slot_size[s] = 0;
    }
  }

  // Slots ------------------------------------------------------------------
  // posting / per_slot by multiplication (Lemire, Kaser, Kurz 2019), exact
  // for every 32-bit posting index.
  uint32_t slot_of(uint32_t posting) const {
    return static_cast<uint32_t>((static_cast<unsigned __int128>(posting) * slot_divisor) >> 64);
  }

  // A slot for a new image with `id` (ids increase by one per image). When
  // `capacity` images are stored, the oldest becomes dead; when no slot is
  // free, the dead images are removed first.
  uint32_t acquire_slot(uint64_t id) {
    if (held == slots) remove_dead(id);
    const uint32_t slot = static_cast<uint32_t>((first_held + held) % slots);
    if (slot == slot_id.size()) {
      reserve_for(slot_id.size() + 1);
      slot_id.push_back(id);
      slot_size.push_back(0);
      counts.push_back(0);
      posting_key.resize(posting_key.size() + per_slot, 0);
      links.resize(links.size() + per_slot, Link{kNone, 0});
      bloom.resize(bloom.size() + static_cast<size_t>(per_slot / kept) * kBloomWords, 0);
    }
    slot_id[slot] = id;
    // Every position, used by the new image or not, carries its id: an older
    // posting's link into this slot then always ends a walk.
    const uint32_t base = slot * static_cast<uint32_t>(per_slot);
    for (int64_t j = 0; j < per_slot; ++j) links[base + j] = Link{kNone, static_cast<uint32_t>(id)};
    ++held;
    if (static_cast<int64_t>(stored) == capacity) {
      ++evictions;
    } else {
      ++stored;
    }
    return slot;
  }

  // Grows the slot arrays geometrically but never beyond the capacity.
  void reserve_for(size_t slots) {
    if (slots <= slot_id.capacity()) return;
    const size_t target = std::min<size_t>(static_cast<size_t>(this->slots), std::max<size_t>(slots, 2 * slot_id.size()));
    slot_id.reserve(target);
    slot_size.reserve(target);
    counts.reserve(target);
    posting_key.reserve(target * per_slot);
    links.reserve(target * per_slot);
    bloom.reserve(target * static_cast<size_t>(per_slot / kept) * kBloomWords);
    detail::advise_huge_pages(posting_key);
    detail::advise_huge_pages(links);
    detail::advise_huge_pages(bloom);
  }

  // The stored image sharing the most of `query_keys` (distinct keys), and
  // how many; ties go to the newest image. `offset` locates the scope's keys
  // inside a slot's postings (kept sorted, largest first).
  //
  // Pruning (the T-occurrence bound): an image sharing at least `threshold`
  // of the n keys appears in at least one of any n − threshold + 1 of their
  // posting lists. So only the shortest n − threshold + 1 lists are walked;
  // each image found there is then checked against the other keys in its own
  // sorted key block. Keys shared by very many stored images (blank
  // backgrounds) are thus mostly looked up in the candidates' blocks, not
  // walked. The count is exact when it reaches the threshold; below it, it
  // is a lower bound. List lengths (the cells' live-posting counts) only
  // decide which lists are walked, not the result.
  //
  // Every phase touches memory at random, so each first starts the loads of
  // what it will read for all its items, then reads: the lookups of the n keys, one
  // step of every walked list at a time, the Bloom filters of the candidates
  // and then their key blocks.
  std::pair<int64_t, uint32_t> best_match(const std::vector<uint64_t>& query_keys, int64_t offset, int64_t threshold,
                                          int64_t max_scan) {
    lists.clear();
    for (const uint64_t key : query_keys) touch_home(key);
    for (const uint64_t key : query_keys) {
      const size_t cell = find(key);
      if (cell == cells.size()) continue;  // no stored image has it
      lists.push_back(List{cells[cell].length, cells[cell].head, key});
    }
    const size_t n = query_keys.size();
    const size_t absent = n - lists.size();
    // Lists to walk: n − threshold + 1 in all; absent ones count as walked.
    const size_t walk_total = static_cast<int64_t>(n) >= threshold ? n - static_cast<size_t>(threshold) + 1 : n;
    size_t walk = walk_total > absent ? std::min(walk_total - absent, lists.size()) : 0;
    std::sort(lists.begin(), lists.end(), [](const List& a, const List& b) { return a.length < b.length; });
    // A few more short lists are cheaper to walk than the candidates they rule
    // out (each list walked raises the count an image needs from the walk).
    for (int extra = 0; extra < 3 && walk < lists.size() && lists[walk].length <= 64; ++extra) ++walk;
    // The walks advance together, one posting of each live list per round.
    // Ages (newest id − posting id, modulo 2^32: live images span fewer than
    // 2^32 ids) grow strictly along a live list; a posting of a reused slot is
    // younger than its predecessor, which ends that list's walk.
    // Images older than the newest `capacity` are dead: a walk stops there.
    const uint32_t now = static_cast<uint32_t>(next_id);
    const int64_t oldest_live_age = capacity + 1;  // next_id is already the query's id + 1
    walks.clear();
    for (size_t l = 0; l < walk; ++l) {
      if (lists[l].head == kNone || max_scan < 1) continue;
      touch(&links[lists[l].head]);
      walks.push_back(Walk{lists[l].head, -1, 0});
    }
    while (!walks.empty()) {
      size_t live = 0;
      for (Walk w : walks) {
        const Link link = links[w.posting];
        const int64_t age = static_cast<uint32_t>(now - link.id);
        if (age <= w.previous_age || age > oldest_live_age) continue;  // a reused slot or a dead image: the rest is dead
        const uint32_t slot = slot_of(w.posting);
        if (counts[slot]++ == 0) touched.push_back(slot);
        if (link.next == kNone || ++w.scanned >= max_scan) continue;
        touch(&links[link.next]);
        walks[live++] = Walk{link.next, age, w.scanned};
      }
      walks.resize(live);
    }
    // Candidates: images that can still reach the threshold (each unwalked
    // list adds at most one) are checked against their Bloom filter (one
    // cache line, an upper bound on the count) and, if that passes, counted
    // exactly in their sorted key block.
    const auto filter_of = [&](uint32_t slot) {
      return &bloom[(slot * static_cast<size_t>(per_slot / kept) + offset / kept) * kBloomWords];
    };
    const auto block_of = [&](uint32_t slot) {
      return posting_key.begin() + static_cast<int64_t>(slot) * per_slot + offset;
    };
    const int64_t unwalked = static_cast<int64_t>(lists.size() - walk);
    candidates.clear();
    for (const uint32_t slot : touched) {
      if (unwalked > 0 && counts[slot] + unwalked >= threshold) {
        touch(filter_of(slot));
        candidates.push_back(slot);
      }
    }
    size_t exact = 0;
    for (const uint32_t slot : candidates) {
      const uint64_t* filter = filter_of(slot);
      int64_t upper = counts[slot];
      for (size_t l = walk; l < lists.size(); ++l) {
        bool hit = true;
        for (const uint32_t bit : bloom_bits(lists[l].key)) hit = hit && (filter[bit >> 6] >> (bit & 63) & 1);
        upper += hit;
      }
      if (upper >= threshold) {
        const auto begin = block_of(slot);
        for (int64_t b = 0; b < slot_size[slot]; b += 8) touch(&*(begin + b));  // 8 keys per cache line
        candidates[exact++] = slot;
      }
    }
    for (size_t c = 0; c < exact; ++c) {
      const uint32_t slot = candidates[c];
      const auto begin = block_of(slot);
      const auto end = begin + slot_size[slot];
      for (size_t l = walk; l < lists.size(); ++l) {
        counts[slot] += std::binary_search(begin, end, lists[l].key, std::greater<uint64_t>());
      }
    }
    int64_t best = 0;
    uint32_t best_slot = kNone;
    for (const uint32_t slot : touched) {
      const int64_t count = counts[slot];
      counts[slot] = 0;
      if (count > best || (count == best && best_slot != kNone && slot_id[slot] > slot_id[best_slot])) {
        best = count;
        best_slot = slot;
      }
    }
    touched.clear();
    return {best, best_slot};
  }

  // Two bit positions of a key in a 512-bit filter (the low bits of the hash
  // are uniform even for the numerically largest hashes).
  static std::array<uint32_t, 2> bloom_bits(uint64_t key) {
    return {static_cast<uint32_t>(key & 511), static_cast<uint32_t>((key >> 9) & 511)};
  }

  size_t memory_bytes() const {
    return cells.capacity() * sizeof(Cell) + posting_key.capacity() * sizeof(uint64_t) +
           links.capacity() * sizeof(Link) + lists.capacity() * sizeof(List) + walks.capacity() * sizeof(Walk) +
           candidates.capacity() * sizeof(uint32_t) +
           bloom.capacity() * sizeof(uint64_t) + slot_id.capacity() * sizeof(uint64_t) +
           slot_size.capacity() * sizeof(uint16_t) + counts.capacity() * sizeof(uint16_t) +
           touched.capacity() * sizeof(uint32_t) + removals.capacity() * sizeof(Removal);
  }

  const int64_t capacity;  // live images: the newest `capacity`
  const int64_t slots;     // capacity + spare slots for dead images
  const int64_t per_slot;
  const int64_t kept;  // hashes_kept: postings per image and index
  const size_t max_cells;
  const uint64_t slot_divisor;  // ceil(2^64 / per_slot)
  std::vector<Cell> cells;
  size_t entries = 0;
  std::vector<uint64_t> posting_key;
  // Per posting, what a walk reads: the next older posting of the key and the
  // low 32 bits of the image id (one cache line access per step).
  struct Link {
    uint32_t next;
    uint32_t id;
  };
  std::vector<Link> links;
  std::vector<uint64_t> bloom;          // per slot and index: a 512-bit Bloom filter of its keys (2 bits per key)
  std::vector<uint64_t> slot_id;        // id of the image in each slot
  std::vector<uint16_t> slot_size;      // hashes kept for it (<= hashes_kept)
  std::vector<uint16_t> counts;         // scratch for best_match, all zero between calls
  std::vector<uint32_t> touched;        // scratch: slots with a non-zero count
  struct List {
    uint32_t length;  // live postings of the key
    uint32_t head;
    uint64_t key;
  };
  std::vector<List> lists;  // scratch for best_match
  struct Walk {
    uint32_t posting;      // the next posting to visit
    int64_t previous_age;  // age of the posting visited before it
    int64_t scanned;
  };
  std::vector<Walk> walks;          // scratch for best_match
  std::vector<uint32_t> candidates;  // scratch for best_match
  size_t first_held = 0;    // slot of the oldest image held (live or dead)
  size_t held = 0;          // images held: live and dead not yet removed
  struct Removal {
    size_t cell;  // the key's home cell: removals go in table order
    uint64_t key;
    uint32_t posting;
  };
  std::vector<Removal> removals;  // scratch for remove_dead
  uint64_t postings = 0;
  uint64_t stored = 0;  // live images
  uint64_t next_id = 1;
  uint64_t evictions = 0;
};

}  // namespace detail

}  // namespace parry::conceal
