-- Place holds: each op holds its lines for one channel, all or nothing, until expires_at_ms.
-- KEYS[1..10] partition keys
-- ARGV[1] op count; per op: hold id, fingerprint, channel, customer ('' = none), ttl_ms,
--         parts (csv of partitions the hold spans), line count n, then n x (sku, qty > 0)
-- Returns per op: {0, hold record JSON} or {code, details...}
expire_due(-1)

local function reject(rec, reply)
  rec.st, rec.err = 'rejected', reply
  save(rec)
  redis.call('ZADD', K.finished, NOW, rec.id)
  return reply
end

local function check(rec, wanted)
  if not catalog().channels[rec.ch] then return { UNKNOWN_CHANNEL, rec.ch } end
  for _, w in ipairs(wanted) do
    local st = sku_settings(w[1])
    if not st then return { UNKNOWN_SKU, w[1] } end
    local available = ats(w[1], st, rec.ch)
    if w[2] > available then return { INSUFFICIENT_STOCK, w[1], w[2], available } end
  end
  return nil
end

local function place(rec, wanted)
  local raw = redis.call('HGET', K.holds, rec.id)
  if raw then
    local first = cjson.decode(raw)
    if first.fp ~= rec.fp then return { IDEMPOTENCY_CONFLICT, rec.id } end
    return first.err or { OK, raw }
  end
  local failure = check(rec, wanted)
  if failure then return reject(rec, failure) end
  for _, w in ipairs(wanted) do allocate(w[1], rec.ch, w[2], rec.lines) end
  apply_held(rec, 1)
  local encoded = save(rec)
  redis.call('ZADD', K.expiry, rec.exp, rec.id)
  hold_event(rec, 'placed')
  return { OK, encoded }
end

local replies, i = {}, 2
for n = 1, tonumber(ARGV[1]) do
  local rec = { id = ARGV[i], fp = ARGV[i + 1], ch = ARGV[i + 2], exp = NOW + tonumber(ARGV[i + 4]),
                parts = ARGV[i + 5], st = 'held', lines = {} }
  if ARGV[i + 3] ~= '' then rec.cust = ARGV[i + 3] end
  local lines, wanted, by_sku = tonumber(ARGV[i + 6]), {}, {}
  for j = 1, lines do
    local sku, qty = ARGV[i + 5 + 2 * j], tonumber(ARGV[i + 6 + 2 * j])
    if by_sku[sku] then by_sku[sku][2] = by_sku[sku][2] + qty
    else by_sku[sku] = { sku, qty }; wanted[#wanted + 1] = by_sku[sku] end
  end
  i = i + 7 + 2 * lines
  replies[n] = place(rec, wanted)
end
return replies
