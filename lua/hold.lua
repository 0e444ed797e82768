-- Place holds: each op holds its lines for one channel, all or nothing, until expires_at_ms.
-- KEYS[1..7] partition keys
-- ARGV[1] JSON array of ops: [hold id, fingerprint, channel, customer ('' = none), ttl_ms,
--         parts (csv of the partitions the hold spans), [[sku, qty > 0], ...] (distinct skus),
--         and for a flash-sale hold: sale, per-customer limit, customer key]
-- Returns per op: {0, hold record JSON} or {code, details...}
expire_due(-1)

local function reject(rec, reply)
  rec.st, rec.err = 'rejected', reply
  finished[rec.id] = NOW
  save(rec)
  return reply
end

-- Checks every line; keeps each SKU's per-location free units in w[3] for allocate().
local function check(rec, wanted)
  if not catalog().channels[rec.ch] then return { UNKNOWN_CHANNEL, rec.ch } end
  for _, w in ipairs(wanted) do
    local st = sku_settings(w[1])
    if not st then return { UNKNOWN_SKU, w[1] } end
    local available
    available, w[3] = ats(w[1], st, rec.ch)
    if w[2] > available then return { INSUFFICIENT_STOCK, w[1], w[2], available } end
    if rec.sale then
      local used = limit_used(w[1], rec)
      if used + w[2] > rec.lim then return { LIMIT_EXCEEDED, w[1], w[2], rec.lim, used } end
    end
  end
  return nil
end

-- Reads every hold id (a replay?) and SKU of the batch with one HMGET each.
local function read_ahead(ops)
  local ids, skus = {}, {}
  for i, op in ipairs(ops) do
    ids[i] = op[1]
    for _, w in ipairs(op[7]) do skus[#skus + 1] = w[1] end
  end
  prefetch(K.holds, stored_holds, ids)
  prefetch(K.skus, stored_skus, skus)
end

return each_op(function(op)
  local rec = { id = op[1], fp = op[2], ch = op[3], exp = NOW + op[5], parts = op[6],
                st = 'held', lines = {} }
  if op[4] ~= '' then rec.cust = op[4] end
  if op[8] then rec.sale, rec.lim, rec.ck = op[8], op[9], op[10] end
  local raw = hold_record(rec.id)
  if raw then
    local first = cjson.decode(raw)
    if first.fp ~= rec.fp then return { IDEMPOTENCY_CONFLICT, rec.id } end
    return first.err or { OK, raw }
  end
  local failure = check(rec, op[7])
  if failure then return reject(rec, failure) end
  for _, w in ipairs(op[7]) do allocate(w[1], rec.ch, w[2], w[3], rec.lines) end
  apply_held(rec, 1)
  track_limit(rec, 'placed', 'held')
  expiry[rec.id] = rec.exp
  return { OK, save(rec, 'placed') }
end, read_ahead)
