-- Shared prelude, prepended to every script by engine/scripts.py.
-- KEYS[1..10] are the partition keys in engine/keys.py order; operation keys follow.
-- Business outcomes are integer codes (engine/errors.py Code); error_reply is for broken invariants.
local K = {
  catalog = KEYS[1], skus = KEYS[2], on_hand = KEYS[3], committed = KEYS[4], held = KEYS[5],
  channel_held = KEYS[6], holds = KEYS[7], expiry = KEYS[8], outbox = KEYS[9], finished = KEYS[10],
}
local OK, INSUFFICIENT_STOCK, UNKNOWN_SKU, UNKNOWN_CHANNEL, UNKNOWN_LOCATION = 0, 1, 2, 3, 4
local IDEMPOTENCY_CONFLICT, HOLD_NOT_FOUND, HOLD_NOT_ACTIVE, SHORTFALL = 5, 6, 7, 8
local INSUFFICIENT_COMMITTED, COUNT_BELOW_RESERVED, MULTI_PART = 9, 10, 11

-- One clock reading per call: every check and record in it sees the same instant.
local server_time = redis.call('TIME')
local NOW = tonumber(server_time[1]) * 1000 + math.floor(tonumber(server_time[2]) / 1000)

local function hget_int(key, field)
  return tonumber(redis.call('HGET', key, field)) or 0
end

local function hincr(key, field, by)
  if by ~= 0 then redis.call('HINCRBY', key, field, by) end
end

local function emit(kind, record)
  record.at_ms = NOW
  redis.call('XADD', K.outbox, '*', 'type', kind, 'data', cjson.encode(record))
end

local catalog_cache
local function catalog()
  if not catalog_cache then
    local raw = redis.call('GET', K.catalog)
    catalog_cache = raw and cjson.decode(raw) or { locations = {}, channels = {} }
  end
  return catalog_cache
end

local sku_cache = {}
local function sku_settings(sku)
  local st = sku_cache[sku]
  if st == nil then
    local raw = redis.call('HGET', K.skus, sku)
    st = raw and cjson.decode(raw) or false
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
  local f = sku .. ':' .. location
  local v = hget_int(K.on_hand, f) - hget_int(K.committed, f) - hget_int(K.held, f)
  if v < 0 then return 0 end
  return v
end

-- ATS(channel, sku): the formula is written out in README.md ("Available to sell").
local function ats(sku, st, channel)
  local cat = catalog()
  local pool = -sku_buffer(st)
  for _, location in ipairs(cat.channels[channel].locations) do
    pool = pool + free_at(sku, location)
  end
  for name, _ in pairs(cat.channels) do
    local p = policy_of(st, name)
    if name ~= channel and p.kind == 'fence' then
      pool = pool - math.max(0, p.qty - hget_int(K.channel_held, sku .. ':' .. name))
    end
  end
  local p = policy_of(st, channel)
  local mine = hget_int(K.channel_held, sku .. ':' .. channel)
  local limit = pool
  if p.kind == 'cap' or p.kind == 'fence' then
    limit = math.min(pool, p.qty - mine)
  elseif p.kind == 'cap_pct' then
    limit = math.min(pool, math.floor(p.qty * (pool + mine) / 100) - mine)
  end
  limit = limit - (p.buffer or 0)
  if limit < 0 then return 0 end
  return limit
end

-- Takes units from the channel's locations in priority order; caller checked ats first.
local function allocate(sku, channel, qty, out)
  for _, location in ipairs(catalog().channels[channel].locations) do
    if qty == 0 then break end
    local take = math.min(qty, free_at(sku, location))
    if take > 0 then
      out[#out + 1] = { sku, location, take }
      qty = qty - take
    end
  end
  if qty > 0 then error({ err = 'stockguard: allocation short for ' .. sku }) end
  return out
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

-- Checks that every SKU of the lines can be held again; returns a shortfall reply or nil.
local function shortfall(rec)
  local order, total = qty_by_sku(rec.lines)
  local reply = {}
  for _, sku in ipairs(order) do
    local st = sku_settings(sku)
    local missing = total[sku] - (st and ats(sku, st, rec.ch) or 0)
    if missing > 0 then reply[#reply + 1] = sku; reply[#reply + 1] = missing end
  end
  if #reply == 0 then return nil end
  table.insert(reply, 1, rec.id)
  table.insert(reply, 1, SHORTFALL)
  return reply
end

local function reallocate(rec)
  local order, total = qty_by_sku(rec.lines)
  local lines = {}
  for _, sku in ipairs(order) do allocate(sku, rec.ch, total[sku], lines) end
  rec.lines = lines
end

local function apply_held(rec, sign)
  for _, l in ipairs(rec.lines) do
    hincr(K.held, l[1] .. ':' .. l[2], sign * l[3])
    hincr(K.channel_held, l[1] .. ':' .. rec.ch, sign * l[3])
  end
end

local function save(rec)
  local encoded = cjson.encode(rec)
  redis.call('HSET', K.holds, rec.id, encoded)
  return encoded
end

local function hold_event(rec, event)
  emit('hold', { event = event, hold_id = rec.id, channel = rec.ch, customer = rec.cust,
                 lines = rec.lines, expires_at_ms = rec.exp, reference = rec.ref })
end

local function finish(rec, state)
  rec.st = state
  local encoded = save(rec)
  redis.call('ZREM', K.expiry, rec.id)
  redis.call('ZADD', K.finished, NOW, rec.id)
  hold_event(rec, state)
  return encoded
end

-- Settles holds whose expiry has passed. Runs at the start of every script, so an
-- expired hold never counts, with or without the sweeper. Cost: O(log n + expired).
local function expire_due(limit)
  local due = redis.call('ZRANGEBYSCORE', K.expiry, '-inf', NOW, 'LIMIT', 0, limit)
  for _, id in ipairs(due) do
    local rec = cjson.decode(redis.call('HGET', K.holds, id))
    apply_held(rec, -1)
    finish(rec, 'expired')
  end
  return #due
end

local function is_multi_part(rec)
  return string.find(rec.parts, ',', 1, true) ~= nil
end

-- Idempotency records of stock operations: {fingerprint, reply}, kept for ttl_ms.
local function replayed(key, fingerprint)
  local raw = redis.call('GET', key)
  if not raw then return nil end
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
  local f = sku .. ':' .. location
  return { OK, hget_int(K.on_hand, f), hget_int(K.committed, f), hget_int(K.held, f) }
end

local function unknown_sku_or_location(sku, ...)
  if not sku_settings(sku) then return { UNKNOWN_SKU, sku } end
  for _, location in ipairs({ ... }) do
    if not catalog().locations[location] then return { UNKNOWN_LOCATION, location } end
  end
  return nil
end

-- Runs a batch of stock operations of `width` ARGV fields each (op id and fingerprint first),
-- replaying the stored reply of any op id seen before.
local function each_stock_op(width, apply)
  local replies, i = {}, 3
  for n = 1, tonumber(ARGV[1]) do
    local a = { unpack(ARGV, i, i + width - 1) }
    replies[n] = replayed(KEYS[10 + n], a[2]) or remember(KEYS[10 + n], a[2], apply(a), ARGV[2])
    i = i + width
  end
  return replies
end
