// The Redis state stores: the QueryMonitor's fingerprints and inverted index,
// and the Throttle's token buckets, each decision one EVALSHA of a Lua script
// (atomic: Redis runs one script at a time).
//
// Query store layout under P = "<prefix>:qm":
//   P:meta          the settings the layout depends on; a replica with other
//                   settings is refused (its requests fail by its policy)
//   P:next          the last id given (INCR: ids are global across replicas)
//   P:f:<id>        the image's keys, 8 bytes big-endian each: the global
//                   block, then the per-client block (each sorted descending)
//   P:x:<bucket>    a hash from key (8 bytes) to its posting list: the ids
//                   (6 bytes big-endian) of the stored images holding it,
//                   newest first, at most max_scan_per_hash of them (a walk
//                   never reads further, and the oldest go first anyway).
//                   Keys are spread over about stored × keys / 32 hashes, so
//                   that most stay small listpacks (about 20 bytes per posting
//                   instead of about 100 for a Redis key per list).
//   P:entries, P:postings, P:evictions   counters for stats()
//   P:salt          the monitors' secret salt key (decimal), set once by the
//                   first salted monitor (SET NX) and kept by clear()
// Ids are consecutive, so the image to evict when id exceeds
// max_stored_queries is id − max_stored_queries: the oldest, whose id is at
// the old end of each of its lists (popped there, no search), unless a list
// already dropped it past max_scan_per_hash.
//
// Bucket store layout under T = "<prefix>:th": T:c:<XXH3-64 of the client id,
// hex> and T:g, hashes {t: tokens, u: time of the last refill}, written with
// 17 significant digits so that doubles survive the round trip exactly. Client
// buckets expire once idle long enough to have refilled (burst / rate seconds,
// plus one): the Redis counterpart of max_clients eviction, and exact, since a
// recreated bucket starts full.
#define XXH_INLINE_ALL
#include <xxhash.h>

#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <sstream>

#include "conceal/redis_client.hpp"
#include "conceal/state_store.hpp"
#include "parry/core/log.hpp"

namespace parry::conceal::detail {

namespace {

// ARGV: P, meta, max_stored, max_scan, threshold, buckets, blocks (1 or 2),
// then per image its global keys and its per-client keys (each empty when
// that index is not kept). Returns per image: id, global matches, global
// match id, client matches, client match id.
const RedisScript kMonitorScript(R"lua(
local p = ARGV[1]
local meta = redis.call('GET', p .. ':meta')
if not meta then
  redis.call('SET', p .. ':meta', ARGV[2])
elseif meta ~= ARGV[2] then
  return redis.error_reply('PARRY the query monitor settings stored under ' .. p .. ' (' .. meta ..
                           ') differ from this one (' .. ARGV[2] .. ')')
end
local max_stored = tonumber(ARGV[3])
local max_scan = tonumber(ARGV[4])
local threshold = tonumber(ARGV[5])
local buckets = tonumber(ARGV[6])
local blocks = tonumber(ARGV[7])
local call, sub, pack, unpack = redis.call, string.sub, struct.pack, struct.unpack
local cache = {}  -- key -> posting list, or false when absent
local entries, postings, evictions = 0, 0, 0

local function bucket(k)
  return p .. ':x:' .. (unpack('>I4', k, 5) % buckets)
end
local function get(k)
  local v = cache[k]
  if v == nil then
    v = call('HGET', bucket(k), k)
    cache[k] = v
  end
  return v
end
local function put(k, v)
  cache[k] = v
  call('HSET', bucket(k), k, v)
end
local function name(id)
  return p .. ':f:' .. string.format('%.0f', id)
end

-- The stored image sharing most of the keys in blob (block: its block in the
-- stored fingerprints), as QueryMonitor's in-process index finds it: walk the
-- shortest n - threshold + 1 lists (and up to 3 more of at most 64 entries),
-- then count the other keys in each candidate that could still reach the
-- threshold. Ties go to the newest.
local function best(blob, block)
  local n = #blob / 8
  local lists = {}
  for i = 0, n - 1 do
    local k = sub(blob, i * 8 + 1, i * 8 + 8)
    local v = get(k)
    if v then lists[#lists + 1] = {#v / 6, v, k} end
  end
  local absent = n - #lists
  local walk_total = n
  if n >= threshold then walk_total = n - threshold + 1 end
  local walk = 0
  if walk_total > absent then walk = math.min(walk_total - absent, #lists) end
  table.sort(lists, function(a, b) return a[1] < b[1] end)
  local extra = 0
  while extra < 3 and walk < #lists and lists[walk + 1][1] <= 64 do
    walk = walk + 1
    extra = extra + 1
  end
  local counts, touched = {}, {}
  for l = 1, walk do
    local v = lists[l][2]
    for j = 1, #v, 6 do
      local id = sub(v, j, j + 5)
      local c = counts[id]
      if c then
        counts[id] = c + 1
      else
        counts[id] = 1
        touched[#touched + 1] = id
      end
    end
  end
  local rest = #lists - walk
  local best_count, best_id = 0, 0
  for t = 1, #touched do
    local count = counts[touched[t]]
    local id = unpack('>I6', touched[t])
    if rest > 0 and count + rest >= threshold then
      local fp = call('GET', name(id))
      if fp then
        local size = #fp / blocks
        local have = {}
        for i = block * size + 1, (block + 1) * size, 8 do have[sub(fp, i, i + 7)] = true end
        for l = walk + 1, #lists do
          if have[lists[l][3]] then count = count + 1 end
        end
      end
    end
    if count > best_count or (count == best_count and id > best_id) then
      best_count = count
      best_id = id
    end
  end
  return best_count, best_id
end

local out = {}
for a = 8, #ARGV, 2 do
  local global_keys, client_keys = ARGV[a], ARGV[a + 1]
  local id = call('INCR', p .. ':next')
  local gm, gid, cm, cid = 0, 0, 0, 0
  if #global_keys > 0 then gm, gid = best(global_keys, 0) end
  if #client_keys > 0 then cm, cid = best(client_keys, blocks - 1) end
  if id > max_stored then  -- evict the oldest
    local old = id - max_stored
    local fp = call('GET', name(old))
    if fp then
      local old6 = pack('>I6', old)
      for i = 1, #fp, 8 do
        local k = sub(fp, i, i + 7)
        local v = get(k)
        if v and sub(v, -6) == old6 then
          if #v == 6 then
            cache[k] = false
            call('HDEL', bucket(k), k)
            entries = entries - 1
          else
            put(k, sub(v, 1, #v - 6))
          end
          postings = postings - 1
        end
      end
      call('DEL', name(old))
    end
    evictions = evictions + 1
  end
  local id6 = pack('>I6', id)
  local all = global_keys .. client_keys
  for i = 1, #all, 8 do
    local k = sub(all, i, i + 7)
    local v = get(k)
    if v then
      if #v >= max_scan * 6 then
        v = sub(v, 1, (max_scan - 1) * 6)
        postings = postings - 1
      end
      put(k, id6 .. v)
    else
      put(k, id6)
      entries = entries + 1
    end
    postings = postings + 1
  end
  call('SET', name(id), all)
  out[#out + 1] = id
  out[#out + 1] = gm
  out[#out + 1] = gid
  out[#out + 1] = cm
  out[#out + 1] = cid
end
if entries ~= 0 then call('INCRBY', p .. ':entries', entries) end
if postings ~= 0 then call('INCRBY', p .. ':postings', postings) end
if evictions ~= 0 then call('INCRBY', p .. ':evictions', evictions) end
return out
)lua");

// ARGV: client key, global key ('' without a global bucket), cost, now
// (negative: Redis' TIME), rate, burst, global rate, global burst, client
// expiry (ms), global expiry (ms). Returns admitted (0/1), the client's
// tokens and the global tokens, as text with 17 significant digits.
// The refill is Throttle's, operation for operation, in doubles.
const RedisScript kThrottleScript(R"lua(
local now = tonumber(ARGV[4])
if now < 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local cost = tonumber(ARGV[3])
local function refill(key, rate, burst)
  local v = redis.call('HMGET', key, 't', 'u')
  local tokens, updated = burst, now
  if v[1] then
    tokens = tonumber(v[1])
    updated = tonumber(v[2])
  end
  local elapsed = now - updated
  if elapsed > 0 then
    tokens = math.min(burst, tokens + elapsed * rate)
    updated = now
  end
  return tokens, updated
end
local function save(key, tokens, updated, expiry)
  redis.call('HSET', key, 't', string.format('%.17g', tokens), 'u', string.format('%.17g', updated))
  redis.call('PEXPIRE', key, expiry)
end
local global = ARGV[2] ~= ''
local ct, cu = refill(ARGV[1], tonumber(ARGV[5]), tonumber(ARGV[6]))
local gt, gu = 0, 0
if global then gt, gu = refill(ARGV[2], tonumber(ARGV[7]), tonumber(ARGV[8])) end
local ok = ct >= cost and (not global or gt >= cost)
if ok then
  ct = ct - cost
  if global then gt = gt - cost end
end
save(ARGV[1], ct, cu, ARGV[9])
if global then save(ARGV[2], gt, gu, ARGV[10]) end
return {ok and 1 or 0, string.format('%.17g', ct), string.format('%.17g', gt)}
)lua");

std::string exact(double v) {
  char text[40];
  std::snprintf(text, sizeof text, "%.17g", v);
  return text;
}

void append_keys(std::string& blob, const std::vector<uint64_t>& keys) {
  for (const uint64_t key : keys) {
    for (int shift = 56; shift >= 0; shift -= 8) blob.push_back(static_cast<char>((key >> shift) & 0xff));
  }
}

int64_t integer_at(const redisReply* reply, size_t i) {
  const redisReply* e = reply->element[i];
  if (e->type != REDIS_REPLY_INTEGER) throw UnavailableError("Redis: unexpected reply from the query script");
  return e->integer;
}

uint64_t integer_or_zero(const redisReply* e) {
  if (e->type == REDIS_REPLY_STRING) return std::strtoull(e->str, nullptr, 10);
  if (e->type == REDIS_REPLY_INTEGER) return static_cast<uint64_t>(std::max<long long>(0, e->integer));
  return 0;
}

class RedisQueryStore final : public QueryStore {
 public:
  explicit RedisQueryStore(const QueryMonitorOptions& options)
      : client_(*options.redis()),
        prefix_(options.redis()->prefix() + ":qm"),
        global_(options.scope() != MonitorScope::PerClient),
        client_index_(options.scope() != MonitorScope::Global),
        blocks_((global_ ? 1 : 0) + (client_index_ ? 1 : 0)),
        max_stored_(options.max_stored_queries()),
        max_scan_(options.max_scan_per_hash()),
        threshold_(options.threshold()) {
    const double postings = static_cast<double>(max_stored_) * options.hashes_kept() * blocks_;
    buckets_ = 1;
    while (buckets_ < static_cast<int64_t>(std::ceil(postings / 32)) && buckets_ < (int64_t{1} << 32)) buckets_ *= 2;
    std::ostringstream meta;
    meta << "v1 max_stored=" << max_stored_ << " hashes_kept=" << options.hashes_kept()
         << " scope=" << to_string(options.scope()) << " max_scan=" << max_scan_ << " buckets=" << buckets_
         << " salted=" << (options.salted() ? 1 : 0);
    meta_ = meta.str();
  }

  std::vector<StoreMatch> match_and_insert(const std::vector<StoreQuery>& queries) override {
    std::vector<std::string> args{prefix_,
                                  meta_,
                                  std::to_string(max_stored_),
                                  std::to_string(max_scan_),
                                  std::to_string(threshold_),
                                  std::to_string(buckets_),
                                  std::to_string(blocks_)};
    args.reserve(args.size() + 2 * queries.size());
    for (const StoreQuery& q : queries) {
      std::string global_blob, client_blob;
      if (global_) append_keys(global_blob, q.global_keys);
      if (client_index_) append_keys(client_blob, q.client_keys);
      args.push_back(std::move(global_blob));
      args.push_back(std::move(client_blob));
    }
    const Reply reply = client_.eval(kMonitorScript, args);
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 5 * queries.size()) {
      throw UnavailableError("Redis: unexpected reply from the query script");
    }
    std::vector<StoreMatch> out(queries.size());
    for (size_t i = 0; i < queries.size(); ++i) {
      StoreMatch& m = out[i];
      m.query_id = static_cast<uint64_t>(integer_at(reply.get(), 5 * i));
      m.global_matches = integer_at(reply.get(), 5 * i + 1);
      m.global_match_id = static_cast<uint64_t>(integer_at(reply.get(), 5 * i + 2));
      m.client_matches = integer_at(reply.get(), 5 * i + 3);
      m.client_match_id = static_cast<uint64_t>(integer_at(reply.get(), 5 * i + 4));
    }
    return out;
  }

  QueryStoreStats stats() const override {
    const Reply reply = client_.command(
        {"MGET", prefix_ + ":next", prefix_ + ":entries", prefix_ + ":postings", prefix_ + ":evictions"});
    QueryStoreStats out;
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 4) return out;
    const uint64_t next = integer_or_zero(reply->element[0]);
    out.stored = std::min<uint64_t>(next, static_cast<uint64_t>(max_stored_));
    out.index_entries = integer_or_zero(reply->element[1]);
    out.postings = integer_or_zero(reply->element[2]);
    out.evictions = integer_or_zero(reply->element[3]);
    return out;
  }

  void clear() override {
    // SCAN (not KEYS, which would block Redis on a large store) and UNLINK.
    std::string cursor = "0";
    do {
      const Reply reply = client_.command({"SCAN", cursor, "MATCH", prefix_ + ":*", "COUNT", "1000"});
      if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2) {
        throw UnavailableError("Redis: unexpected reply to SCAN");
      }
      cursor.assign(reply->element[0]->str, reply->element[0]->len);
      const redisReply* keys = reply->element[1];
      if (keys->elements > 0) {
        std::vector<std::string> unlink{"UNLINK"};
        for (size_t i = 0; i < keys->elements; ++i) {
          std::string key(keys->element[i]->str, keys->element[i]->len);
          if (key != prefix_ + ":salt") unlink.push_back(std::move(key));  // other replicas hold it
        }
        if (unlink.size() > 1) client_.command(unlink);
      }
    } while (cursor != "0");
  }

  std::string describe() const override { return client_.describe(); }

  uint64_t salt_key(uint64_t proposed, bool must_match) override {
    const std::string key = prefix_ + ":salt";
    client_.command({"SET", key, std::to_string(proposed), "NX"});
    const Reply reply = client_.command({"GET", key});
    if (reply->type != REDIS_REPLY_STRING) throw UnavailableError("Redis: no salt key under " + key);
    const std::string text(reply->str, reply->len);
    char* end = nullptr;
    const uint64_t stored = std::strtoull(text.c_str(), &end, 10);
    if (text.empty() || end != text.c_str() + text.size()) {
      throw UnavailableError("Redis: the salt key under " + key + " is not a number");
    }
    if (must_match && stored != proposed) {
      throw UnavailableError("Redis: the salt key stored under " + key +
                             " differs from this monitor's salt_key (monitors sharing a prefix must share the salt)");
    }
    return stored;
  }

 private:
  mutable RedisClient client_;
  const std::string prefix_;
  const bool global_;
  const bool client_index_;
  const int blocks_;
  const int64_t max_stored_;
  const int64_t max_scan_;
  const int64_t threshold_;
  int64_t buckets_ = 1;
  std::string meta_;
};

// Milliseconds for an empty bucket to refill, plus a second.
int64_t expiry_ms(double burst, double rate) {
  return static_cast<int64_t>(std::ceil(burst / rate * 1000)) + 1000;
}

double number_of(const redisReply* e) {
  if (e->type != REDIS_REPLY_STRING) throw UnavailableError("Redis: unexpected reply from the throttle script");
  return std::strtod(std::string(e->str, e->len).c_str(), nullptr);
}

class RedisBucketStore final : public BucketStore {
 public:
  explicit RedisBucketStore(const ThrottleOptions& options)
      : options_(options),
        client_(*options.redis()),
        prefix_(options.redis()->prefix() + ":th"),
        client_expiry_(std::to_string(expiry_ms(options.burst(), options.rate()))),
        global_expiry_(options.global_rate() > 0
                           ? std::to_string(expiry_ms(options.global_burst(), options.global_rate()))
                           : "0") {}

  BucketTake take(const std::string& client_id, double cost) override {
    char hash[17];
    std::snprintf(hash, sizeof hash, "%016" PRIx64,
                  static_cast<uint64_t>(XXH3_64bits(client_id.data(), client_id.size())));
    const bool global = options_.global_rate() > 0;
    const double now = options_.has_clock() ? options_.clock()() : -1.0;
    const Reply reply = client_.eval(
        kThrottleScript, {prefix_ + ":c:" + hash, global ? prefix_ + ":g" : std::string(), exact(cost), exact(now),
                          exact(options_.rate()), exact(options_.burst()), exact(options_.global_rate()),
                          exact(options_.global_burst()), client_expiry_, global_expiry_});
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 3 || reply->element[0]->type != REDIS_REPLY_INTEGER) {
      throw UnavailableError("Redis: unexpected reply from the throttle script");
    }
    BucketTake out;
    out.admitted = reply->element[0]->integer == 1;
    out.client_tokens = number_of(reply->element[1]);
    out.global_tokens = number_of(reply->element[2]);
    return out;
  }

  size_t tracked_clients() const override { return 0; }
  uint64_t evictions() const override { return 0; }
  std::string describe() const override { return client_.describe(); }

 private:
  const ThrottleOptions options_;
  RedisClient client_;
  const std::string prefix_;
  const std::string client_expiry_;
  const std::string global_expiry_;
};

}  // namespace

std::unique_ptr<QueryStore> make_redis_query_store(const QueryMonitorOptions& options) {
  return std::make_unique<RedisQueryStore>(options);
}

std::unique_ptr<BucketStore> make_redis_bucket_store(const ThrottleOptions& options) {
  return std::make_unique<RedisBucketStore>(options);
}

}  // namespace parry::conceal::detail
