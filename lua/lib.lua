-- Shared prelude, prepended to every script by engine/scripts.py.
-- KEYS[1..7] are the partition keys in engine/keys.py order; operation keys follow.
-- ARGV[1] is a JSON array of operations (one script call carries a whole batch).
-- Business outcomes are integer codes (engine/errors.py Code); error_reply is for broken invariants.
local K = {
  catalog = KEYS[1], skus = KEYS[2], stock = KEYS[3], holds = KEYS[4], expiry = KEYS[5],
  outbox = KEYS[6], finished = KEYS[7],
}
local FIRST_OP_KEY = 8
local OK, INSUFFICIENT_STOCK, UNKNOWN_SKU, UNKNOWN_CHANNEL, UNKNOWN_LOCATION = 0, 1, 2, 3, 4
local IDEMPOTENCY_CONFLICT, HOLD_NOT_FOUND, HOLD_NOT_ACTIVE, SHORTFALL = 5, 6, 7, 8
local INSUFFICIENT_COMMITTED, COUNT_BELOW_RESERVED, MULTI_PART, LIMIT_EXCEEDED = 9, 10, 11, 12

-- One clock reading per call: every check and record in it sees the same instant.
local server_time = redis.call('TIME')
local NOW = tonumber(server_time[1]) * 1000 + math.floor(tonumber(server_time[2]) / 1000)

-- Writes are buffered and applied once per call by commit(): one HINCRBY per changed
-- counter, one HSET for the hold records, one ZADD/ZREM per sorted set, one XADD. Reads
-- go through the buffer, so every op of a batch sees the ops before it, and a batch of
-- holds on one hot SKU costs a handful of writes instead of several per hold.
local counters, records, expiry, finished = {}, {}, {}, {}

-- Stock hash fields: "sku:location:on_hand|committed|held", "sku:channel:channel_held",
-- and "sku:sale:limit.<customer key>": a customer's held + confirmed units of a sale SKU.
local function level(sku, location)
  local f = sku .. ':' .. location .. ':'
  local on_hand, committed, held = f .. 'on_hand', f .. 'committed', f .. 'held'
  local v = redis.call('HMGET', K.stock, on_hand, committed, held)
  return (tonumber(v[1]) or 0) + (counters[on_hand] or 0),
         (tonumber(v[2]) or 0) + (counters[committed] or 0),
         (tonumber(v[3]) or 0) + (counters[held] or 0)
end

local function channel_held(sku, channel)
  local f = sku .. ':' .. channel .. ':channel_held'
  return (tonumber(redis.call('HGET', K.stock, f)) or 0) + (counters[f] or 0)
end

local function add(sku, place, field, by)
  local f = sku .. ':' .. place .. ':' .. field
  counters[f] = (counters[f] or 0) + by
end

-- Stored hold records and SKU settings (JSON, or false) already read by this call, so a
-- batch can read them all with one HMGET each (prefetch) instead of one HGET per op.
local stored_holds, stored_skus = {}, {}

local function prefetch(hash, known, names)
  for i = 1, #names, 1000 do
    local last = math.min(i + 999, #names)
    local values = redis.call('HMGET', hash, unpack(names, i, last))
    for j = i, last do known[names[j]] = values[j - i + 1] end
  end
end

-- A hold record (JSON) as this call has left it, or false.
local function hold_record(id)
  local raw = records[id]
  if raw == nil then raw = stored_holds[id] end
  if raw == nil then raw = redis.call('HGET', K.holds, id) end
  return raw
end

-- The outbox gets one entry per script call: {at_ms, events = JSON array}. Each event is
-- {"type": "move", ...} | {"type": "hold", "event": name, "hold": record} | catalog, sku.
-- One XADD per call, not per event, keeps the batched hot path cheap.
local outbox_events = {}

local function emit_json(json)
  outbox_events[#outbox_events + 1] = json
end

local function emit(kind, record)
  record.type = kind
  emit_json(cjson.encode(record))
end

-- Applies a member -> score (or false: remove) map to a sorted set.
local function apply_zset(key, members)
  if next(members) == nil then return end
  local adds, removals = {}, {}
  for member, score in pairs(members) do
    if score then
      adds[#adds + 1] = score; adds[#adds + 1] = member
    else
      removals[#removals + 1] = member
    end
  end
  for i = 1, #adds, 1000 do redis.call('ZADD', key, unpack(adds, i, math.min(i + 999, #adds))) end
  for i = 1, #removals, 1000 do
    redis.call('ZREM', key, unpack(removals, i, math.min(i + 999, #removals)))
  end
end

-- Applies every buffered write, the outbox entry last. Every script that changes state
-- calls it before it returns.
local function commit()
  -- One HMGET and one HSET for every changed counter: fewer commands to run and to
  -- propagate to the AOF than one HINCRBY each.
  local fields = {}
  for field, by in pairs(counters) do
    if by ~= 0 then fields[#fields + 1] = field end
  end
  for i = 1, #fields, 1000 do
    local chunk = { unpack(fields, i, math.min(i + 999, #fields)) }
    local base, sets = redis.call('HMGET', K.stock, unpack(chunk)), {}
    for j, field in ipairs(chunk) do
      sets[2 * j - 1] = field
      sets[2 * j] = (tonumber(base[j]) or 0) + counters[field]
    end
    redis.call('HSET', K.stock, unpack(sets))
  end
  local pairs_ = {}
  for id, raw in pairs(records) do
    pairs_[#pairs_ + 1] = id; pairs_[#pairs_ + 1] = raw
    stored_holds[id] = raw
  end
  for i = 1, #pairs_, 1000 do
    redis.call('HSET', K.holds, unpack(pairs_, i, math.min(i + 999, #pairs_)))
  end
  apply_zset(K.expiry, expiry)
  apply_zset(K.finished, finished)
  if #outbox_events > 0 then
    redis.call('XADD', K.outbox, '*', 'at_ms', NOW,
               'events', '[' .. table.concat(outbox_events, ',') .. ']')
  end
  counters, records, expiry, finished, outbox_events = {}, {}, {}, {}, {}
end

local catalog_cache
local function catalog()
  if not catalog_cache then
    local raw = redis.call('GET', K.catalog)
    catalog_cache = raw and cjson.decode(raw) or { locations = {}, channels = {} }
  end
  return catalog_cache
end

-- SKUs whose settings are the same JSON (most keep the defaults) share one decoded table
-- per call: only sku.lua changes a settings table, and it reads a single SKU.
local sku_cache, decoded_settings = {}, {}
local function sku_settings(sku)
  local st = sku_cache[sku]
  if st == nil then
    local raw = stored_skus[sku]
    if raw == nil then raw = redis.call('HGET', K.skus, sku) end
    if raw then
      st = decoded_settings[raw]
      if not st then st = cjson.decode(raw); decoded_settings[raw] = st end
    else
      st = false
    end
    sku_cache[sku] = st
  end
  return st
end

local function policy_of(st, channel)
  return (st.policies and st.policies[channel]) or catalog().channels[channel].policy
end

local function sku_buffer(st)
  local o = st.override
  if o and NOW >= o[1] and NOW < o[2] then return o[3] end
  return st.buffer or 0
end

-- available at a location = on_hand - committed - held, never below zero.
local function free_at(sku, location)
  local on_hand, committed, held = level(sku, location)
  local v = on_hand - committed - held
  if v < 0 then return 0 end
  return v
end

-- Units the channel sold of the SKU under its current policy: the fields "sku:channel:sold"
-- and "sku:channel:sold_since" (the policy's since_ms when they were counted). Sales under an
-- earlier policy do not count against a new allocation.
local function sold_by(sku, channel, p)
  local f = sku .. ':' .. channel .. ':'
  local v = redis.call('HMGET', K.stock, f .. 'sold', f .. 'sold_since')
  local since = (tonumber(v[2]) or 0) + (counters[f .. 'sold_since'] or 0)
  local sold = (tonumber(v[1]) or 0) + (counters[f .. 'sold'] or 0)
  return since == (p.since_ms or 0) and sold or 0, sold, since
end

-- Counts qty units (negative: given back) as sold by the channel under its current policy.
local function add_sold(sku, channel, qty)
  local p = policy_of(sku_settings(sku), channel)
  if p.kind ~= 'cap' and p.kind ~= 'fence' then return end
  local current, stored, since = sold_by(sku, channel, p)
  local f = sku .. ':' .. channel .. ':'
  local target = math.max(0, current + qty)
  counters[f .. 'sold'] = (counters[f .. 'sold'] or 0) + target - stored
  counters[f .. 'sold_since'] = (counters[f .. 'sold_since'] or 0) + (p.since_ms or 0) - since
end

-- What a cap or a fence has used up: the channel's live holds and its sales under the policy.
local function taken(sku, channel, p)
  return channel_held(sku, channel) + sold_by(sku, channel, p)
end

-- ATS(channel, sku): the formula is written out in README.md ("Available to sell").
-- Also returns each location's available units, for allocate().
local function ats(sku, st, channel)
  local cat = catalog()
  local pool, free = -sku_buffer(st), {}
  for i, location in ipairs(cat.channels[channel].locations) do
    free[i] = free_at(sku, location)
    pool = pool + free[i]
  end
  for name, _ in pairs(cat.channels) do
    local p = policy_of(st, name)
    if name ~= channel and p.kind == 'fence' then
      pool = pool - math.max(0, p.qty - taken(sku, name, p))
    end
  end
  local p = policy_of(st, channel)
  local limit = pool
  if p.kind ~= 'pool' then
    if p.kind == 'cap_pct' then
      local mine = channel_held(sku, channel)
      limit = math.min(pool, math.floor(p.qty * (pool + mine) / 100) - mine)
    else -- 'cap' and 'fence' both stop once the channel has held or sold qty units
      limit = math.min(pool, p.qty - taken(sku, channel, p))
    end
  end
  limit = limit - (p.buffer or 0)
  if limit < 0 then return 0, free end
  return limit, free
end

-- Takes qty units from the channel's locations in priority order, appending lines to out.
-- free is what ats() returned for this sku, and ats() covered qty.
local function allocate(sku, channel, qty, free, out)
  for i, location in ipairs(catalog().channels[channel].locations) do
    if qty == 0 then break end
    local take = math.min(qty, free[i])
    if take > 0 then
      out[#out + 1] = { sku, location, take }
      qty = qty - take
    end
  end
  if qty > 0 then error({ err = 'stockguard: allocation short for ' .. sku }) end
  return out
end

-- A sale hold (rec.sale, rec.ck) counts toward its customer's limit while held or confirmed.
local COUNTED = { held = true, confirmed = true }
local function limit_field(sku, rec)
  return sku .. ':' .. rec.sale .. ':limit.' .. rec.ck
end

local function track_limit(rec, from, to)
  if not rec.sale or (COUNTED[from] or false) == (COUNTED[to] or false) then return end
  local sign = COUNTED[to] and 1 or -1
  for _, l in ipairs(rec.lines) do
    local f = limit_field(l[1], rec)
    counters[f] = (counters[f] or 0) + sign * l[3]
  end
end

-- Units of the SKU the hold's customer already holds or bought in the hold's sale.
local function limit_used(sku, rec)
  local f = limit_field(sku, rec)
  return (tonumber(redis.call('HGET', K.stock, f)) or 0) + (counters[f] or 0)
end

-- Sums a hold's lines per SKU, in first-seen order.
local function qty_by_sku(lines)
  local order, total = {}, {}
  for _, l in ipairs(lines) do
    if not total[l[1]] then order[#order + 1] = l[1]; total[l[1]] = 0 end
    total[l[1]] = total[l[1]] + l[3]
  end
  return order, total
end

-- Gives an expired hold's lines their units again, from the locations available now.
-- Returns a SHORTFALL reply, without writing, if any SKU lacks the units, or LIMIT_EXCEEDED
-- if a flash-sale customer has since reached the limit.
local function reallocate(rec)
  local order, total = qty_by_sku(rec.lines)
  local short, free = { SHORTFALL, rec.id }, {}
  for _, sku in ipairs(order) do
    local st, available = sku_settings(sku), 0
    if st then available, free[sku] = ats(sku, st, rec.ch) end
    if total[sku] > available then
      short[#short + 1] = sku
      short[#short + 1] = total[sku] - available
    end
  end
  if #short > 2 then return short end
  for _, sku in ipairs(order) do
    if rec.sale then
      local used = limit_used(sku, rec)
      if used + total[sku] > rec.lim then return { LIMIT_EXCEEDED, sku, total[sku], rec.lim, used } end
    end
  end
  local lines = {}
  for _, sku in ipairs(order) do allocate(sku, rec.ch, total[sku], free[sku], lines) end
  rec.lines = lines
  return nil
end

local function apply_held(rec, sign)
  for _, l in ipairs(rec.lines) do
    add(l[1], l[2], 'held', sign * l[3])
    add(l[1], rec.ch, 'channel_held', sign * l[3])
  end
end

-- Saves the hold record and appends it to the outbox as the event; returns its JSON.
local function save(rec, event)
  local encoded = cjson.encode(rec)
  records[rec.id] = encoded
  if event then emit_json('{"type":"hold","event":"' .. event .. '","hold":' .. encoded .. '}') end
  return encoded
end

local function finish(rec, state)
  track_limit(rec, rec.st, state)
  rec.st = state
  expiry[rec.id], finished[rec.id] = false, NOW
  return save(rec, state)
end

-- Settles holds whose expiry has passed. Runs at the start of every script, so an
-- expired hold never counts, with or without the sweeper. Cost: O(log n + expired).
local function expire_due(limit)
  local due = redis.call('ZRANGEBYSCORE', K.expiry, '-inf', NOW, 'LIMIT', 0, limit)
  for _, id in ipairs(due) do
    local raw = redis.call('HGET', K.holds, id)
    if raw then
      local rec = cjson.decode(raw)
      apply_held(rec, -1)
      finish(rec, 'expired')
    else -- an entry without its record (written by hand): drop it, never stop the partition
      expiry[id] = false
    end
  end
  if #due > 0 then commit() end -- now, so that no early return of the caller can lose them
  return #due
end

local function is_multi_part(rec)
  return string.find(rec.parts, ',', 1, true) ~= nil
end

-- Idempotency records of stock operations: {fingerprint, reply}, kept for ttl_ms. A record
-- that is a claim ('claim:...', see engine/stock.py) means the id was used for a SKU of
-- another partition, so it is a conflict here.
local function replayed(key, fingerprint)
  local raw = redis.call('GET', key)
  if not raw then return nil end
  if string.sub(raw, 1, 6) == 'claim:' then return { IDEMPOTENCY_CONFLICT } end
  local stored = cjson.decode(raw)
  if stored[1] ~= fingerprint then return { IDEMPOTENCY_CONFLICT } end
  return stored[2]
end

local function remember(key, fingerprint, reply, ttl_ms)
  redis.call('SET', key, cjson.encode({ fingerprint, reply }), 'PX', ttl_ms)
  return reply
end

local function move(record)
  emit('move', record)
end


local function location_reply(sku, location)
  local on_hand, committed, held = level(sku, location)
  return { OK, on_hand, committed, held }
end

local function unknown_sku_or_location(sku, ...)
  if not sku_settings(sku) then return { UNKNOWN_SKU, sku } end
  for _, location in ipairs({ ... }) do
    if not catalog().locations[location] then return { UNKNOWN_LOCATION, location } end
  end
  return nil
end

-- Runs each operation of the batch; apply(op) gets one decoded ARGV[1] entry. read_ahead(ops),
-- if given, first reads what the whole batch needs, with a few HMGETs instead of many HGETs.
local function each_op(apply, read_ahead)
  local replies, ops = {}, cjson.decode(ARGV[1])
  if read_ahead then read_ahead(ops) end
  for n, op in ipairs(ops) do replies[n] = apply(op) end
  commit()
  return replies
end

-- Runs a batch of stock operations (op id and fingerprint first in each), replaying the
-- stored reply of any op id seen before. ARGV[2] is the idempotency ttl_ms.
local function each_stock_op(apply)
  local replies = {}
  for n, a in ipairs(cjson.decode(ARGV[1])) do
    local key = KEYS[FIRST_OP_KEY + n - 1]
    replies[n] = replayed(key, a[2]) or remember(key, a[2], apply(a), ARGV[2])
  end
  commit()
  return replies
end
