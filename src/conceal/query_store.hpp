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
// open-addressing table (linear probing, backward-shift deletion) from key to
// the newest posting of that key, so each key's postings form a list from
// newest to oldest. Evicting the oldest image removes the oldest posting of
// each of its keys: the key's cell goes when that posting is also its newest,
// and the older end of a list needs no unlinking, because a walk stops as soon
// as the image ids stop decreasing (a slot reused by a newer image, or a cycle
// back into it). Memory per stored image and index: N postings of 16 bytes
// (key, next, insertion order), table cells of 12 bytes at a load between
// 0.53 and 0.8 (the table never grows beyond what a full store needs), a
// 64-byte Bloom filter of the image's keys, and 12 bytes of slot data.
struct MemoryQueryIndex {
  static constexpr uint32_t kNone = std::numeric_limits<uint32_t>::max();
  static constexpr double kMaxLoad = 0.8;
  static constexpr size_t kBloomWords = 8;  // 512 bits per image and index

  MemoryQueryIndex(int64_t capacity, int64_t per_slot, int64_t kept)
      : capacity(capacity),
        per_slot(per_slot),
        kept(kept),
        // The table never needs more cells than this: there are at most
        // capacity × per_slot distinct keys at once.
        max_cells(static_cast<size_t>(std::ceil(static_cast<double>(capacity * per_slot) / kMaxLoad)) + 1),
        slot_divisor(~uint64_t{0} / static_cast<uint64_t>(per_slot) + 1) {}

  // Table ------------------------------------------------------------------
  // Fingerprint hashes are the numerically largest of each image, so they
  // crowd the top of the 64-bit range: mix them (MurmurHash3's finaliser)
  // before mapping onto the table (Lemire's multiply-shift range reduction).
  size_t home(uint64_t key) const {
    key ^= key >> 33;
    key *= 0xff51afd7ed558ccdULL;
    key ^= key >> 33;
    key *= 0xc4ceb9fe1a85ec53ULL;
    key ^= key >> 33;
    return static_cast<size_t>((static_cast<unsigned __int128>(key) * keys.size()) >> 64);
  }
  size_t next_cell(size_t i) const { return i + 1 == keys.size() ? 0 : i + 1; }

  // The cell holding `key`, or keys.size() if absent.
  size_t find(uint64_t key) const {
    if (keys.empty()) return 0;
    for (size_t i = home(key);; i = next_cell(i)) {
      if (keys[i] == key) return i;
      if (keys[i] == 0) return keys.size();
    }
  }

  void grow() {
    const size_t cells = std::min(max_cells, std::max<size_t>(64, keys.size() + keys.size() / 2));
    std::vector<uint64_t> old_keys;
    std::vector<uint32_t> old_heads;
    old_keys.reserve(cells);
    old_heads.reserve(cells);
    detail::advise_huge_pages(old_keys);
    detail::advise_huge_pages(old_heads);
    old_keys.assign(cells, 0);
    old_heads.assign(cells, kNone);
    old_keys.swap(keys);
    old_heads.swap(heads);
    for (size_t i = 0; i < old_keys.size(); ++i) {
      if (old_keys[i] == 0) continue;
      size_t j = home(old_keys[i]);
      while (keys[j] != 0) j = next_cell(j);
      keys[j] = old_keys[i];
      heads[j] = old_heads[i];
    }
  }

  void erase_cell(size_t i) {
    size_t j = i;
    for (;;) {
      j = next_cell(j);
      if (keys[j] == 0) break;
      const size_t h = home(keys[j]);
      const bool stays = i <= j ? (i < h && h <= j) : (i < h || h <= j);
      if (stays) continue;
      keys[i] = keys[j];
      heads[i] = heads[j];
      i = j;
    }
    keys[i] = 0;
    heads[i] = kNone;
    --entries;
  }

  void add_posting(uint64_t key, uint32_t posting) {
    posting_key[posting] = key;
    size_t cell = find(key);
    if (cell == keys.size()) {
      if (keys.size() < max_cells && static_cast<double>(entries + 1) > kMaxLoad * static_cast<double>(keys.size())) {
        grow();
      }
      cell = home(key);
      while (keys[cell] != 0) cell = next_cell(cell);
      keys[cell] = key;
      heads[cell] = kNone;
      ++entries;
    }
    const uint32_t previous = heads[cell];
    links[posting].next = previous;
    posting_order[posting] =
        previous == kNone ? 1 : std::max(posting_order[previous], posting_order[previous] + 1);  // saturates
    links[posting].id = static_cast<uint32_t>(slot_id[slot_of(posting)]);
    heads[cell] = posting;
    const uint32_t slot = posting / static_cast<uint32_t>(per_slot);
    const uint32_t index = (posting % static_cast<uint32_t>(per_slot)) / static_cast<uint32_t>(kept);
    uint64_t* filter = &bloom[(slot * static_cast<size_t>(per_slot / kept) + index) * kBloomWords];
    for (const uint32_t bit : bloom_bits(key)) filter[bit >> 6] |= uint64_t{1} << (bit & 63);
    ++postings;
  }

  // Removes the oldest posting of its key (the evicted image is the oldest).
  void remove_posting(uint32_t posting) {
    const size_t cell = find(posting_key[posting]);
    if (cell == keys.size()) return;
    if (heads[cell] == posting) erase_cell(cell);  // it was the only one left
    --postings;
  }

  // Slots ------------------------------------------------------------------
  // posting / per_slot by multiplication (Lemire, Kaser, Kurz 2019), exact
  // for every 32-bit posting index.
  uint32_t slot_of(uint32_t posting) const {
    return static_cast<uint32_t>((static_cast<unsigned __int128>(posting) * slot_divisor) >> 64);
  }

  // A slot for a new image with `id`, evicting the oldest image if full.
  uint32_t acquire_slot(uint64_t id) {
    uint32_t slot;
    if (static_cast<int64_t>(slot_id.size()) < capacity) {
      slot = static_cast<uint32_t>(slot_id.size());
      reserve_for(slot_id.size() + 1);
      slot_id.push_back(id);
      slot_size.push_back(0);
      counts.push_back(0);
      posting_key.resize(posting_key.size() + per_slot, 0);
      links.resize(links.size() + per_slot, Link{kNone, 0});
      posting_order.resize(posting_order.size() + per_slot, 0);
      bloom.resize(bloom.size() + static_cast<size_t>(per_slot / kept) * kBloomWords, 0);
    } else {
      slot = static_cast<uint32_t>(oldest);
      oldest = (oldest + 1) % slot_id.size();
      const uint32_t base = slot * static_cast<uint32_t>(per_slot);
      for (int64_t j = 0; j < per_slot; ++j) {
        if (posting_key[base + j] != 0) {  // 0: position unused by this image (keys are never 0)
          remove_posting(base + static_cast<uint32_t>(j));
          posting_key[base + j] = 0;
        }
        // Every position, used by the new image or not, carries its id: an
        // older posting's link into this slot then always ends a walk.
        links[base + j] = Link{kNone, static_cast<uint32_t>(id)};
      }
      slot_id[slot] = id;
      slot_size[slot] = 0;
      const size_t words = static_cast<size_t>(per_slot / kept) * kBloomWords;
      std::fill_n(bloom.begin() + static_cast<int64_t>(slot * words), words, 0);
      --stored;
      ++evictions;
    }
    ++stored;
    return slot;
  }

  // Grows the slot arrays geometrically but never beyond the capacity.
  void reserve_for(size_t slots) {
    if (slots <= slot_id.capacity()) return;
    const size_t target = std::min<size_t>(static_cast<size_t>(capacity), std::max<size_t>(slots, 2 * slot_id.size()));
    slot_id.reserve(target);
    slot_size.reserve(target);
    counts.reserve(target);
    posting_key.reserve(target * per_slot);
    links.reserve(target * per_slot);
    posting_order.reserve(target * per_slot);
    bloom.reserve(target * static_cast<size_t>(per_slot / kept) * kBloomWords);
    detail::advise_huge_pages(posting_key);
    detail::advise_huge_pages(links);
    detail::advise_huge_pages(posting_order);
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
  // is a lower bound. List lengths are estimated from the insertion order of
  // the newest posting (an upper bound: evictions are not subtracted), which
  // only affects which lists are walked, not the result.
  std::pair<int64_t, uint32_t> best_match(const std::vector<uint64_t>& query_keys, int64_t offset, int64_t threshold,
                                          int64_t max_scan) {
    lists.clear();
    for (const uint64_t key : query_keys) {
      const size_t cell = find(key);
      if (cell == keys.size()) continue;  // no stored image has it
      lists.push_back(List{posting_order[heads[cell]], heads[cell], key});
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
    // Ages (newest id − posting id, modulo 2^32: live images span fewer than
    // 2^32 ids) grow strictly along a live list; a posting of a reused slot is
    // younger than its predecessor, which ends the walk.
    const uint32_t now = static_cast<uint32_t>(next_id);
    for (size_t l = 0; l < walk; ++l) {
      int64_t previous_age = -1;
      int64_t scanned = 0;
      for (uint32_t p = lists[l].head; p != kNone && scanned < max_scan; p = links[p].next, ++scanned) {
        const int64_t age = static_cast<uint32_t>(now - links[p].id);
        if (age <= previous_age) break;  // reached a reused slot: the rest of the list is evicted
        previous_age = age;
        const uint32_t slot = slot_of(p);
        if (counts[slot]++ == 0) touched.push_back(slot);
      }
    }
    int64_t best = 0;
    uint32_t best_slot = kNone;
    for (const uint32_t slot : touched) {
      int64_t count = counts[slot];
      counts[slot] = 0;
      // Each unwalked list adds at most one: skip images that cannot reach
      // the threshold without touching their memory.
      if (walk < lists.size() && count + static_cast<int64_t>(lists.size() - walk) >= threshold) {
        // Bloom filter first (one cache line): an upper bound on the count.
        const uint64_t* filter = &bloom[(slot * static_cast<size_t>(per_slot / kept) + offset / kept) * kBloomWords];
        int64_t upper = count;
        for (size_t l = walk; l < lists.size(); ++l) {
          bool hit = true;
          for (const uint32_t bit : bloom_bits(lists[l].key)) hit = hit && (filter[bit >> 6] >> (bit & 63) & 1);
          upper += hit;
        }
        if (upper >= threshold) {  // exact count from the image's sorted keys
          const auto begin = posting_key.begin() + static_cast<int64_t>(slot) * per_slot + offset;
          const auto end = begin + slot_size[slot];
          for (size_t l = walk; l < lists.size(); ++l) {
            count += std::binary_search(begin, end, lists[l].key, std::greater<uint64_t>());
          }
        }
      }
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
    return keys.capacity() * sizeof(uint64_t) + heads.capacity() * sizeof(uint32_t) +
           posting_key.capacity() * sizeof(uint64_t) + links.capacity() * sizeof(Link) +
           posting_order.capacity() * sizeof(uint32_t) + lists.capacity() * sizeof(List) +
           bloom.capacity() * sizeof(uint64_t) + slot_id.capacity() * sizeof(uint64_t) +
           slot_size.capacity() * sizeof(uint16_t) + counts.capacity() * sizeof(uint16_t) +
           touched.capacity() * sizeof(uint32_t);
  }

  const int64_t capacity;
  const int64_t per_slot;
  const int64_t kept;  // hashes_kept: postings per image and index
  const size_t max_cells;
  const uint64_t slot_divisor;  // ceil(2^64 / per_slot)
  std::vector<uint64_t> keys;   // table cells: key, 0 = empty
  std::vector<uint32_t> heads;  // table cells: newest posting of the key
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
  std::vector<uint32_t> posting_order;  // 1 + the number of older postings of the key when it was added
  std::vector<uint64_t> slot_id;        // id of the image in each slot
  std::vector<uint16_t> slot_size;      // hashes kept for it (<= hashes_kept)
  std::vector<uint16_t> counts;         // scratch for best_match, all zero between calls
  std::vector<uint32_t> touched;        // scratch: slots with a non-zero count
  struct List {
    uint32_t length;  // estimated posting-list length
    uint32_t head;
    uint64_t key;
  };
  std::vector<List> lists;  // scratch for best_match
  size_t oldest = 0;        // once full: the slot evicted next
  uint64_t postings = 0;
  uint64_t stored = 0;
  uint64_t next_id = 1;
  uint64_t evictions = 0;
};

}  // namespace detail

}  // namespace parry::conceal
