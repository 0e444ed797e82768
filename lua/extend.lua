-- Extend holds to at least now + ttl_ms. An expired hold is revived only if the
-- channel's ATS still covers every line; a hold is never shortened.
-- KEYS[1..10] partition keys
-- ARGV[1] op count; per op: hold id, op id, ttl_ms, scope ('hold'|'part')
-- Returns per op: {0, hold record JSON} or {code, details...}
expire_due(-1)

local function extend(id, op_id, ttl_ms, scope)
  local raw = redis.call('HGET', K.holds, id)
  if not raw then return { HOLD_NOT_FOUND, id } end
  local rec = cjson.decode(raw)
  if rec.st == 'rejected' then return { HOLD_NOT_FOUND, id } end
  if scope == 'hold' and is_multi_part(rec) then return { MULTI_PART, rec.parts } end
  if rec.ext == op_id then return { OK, raw } end
  if rec.st == 'confirmed' or rec.st == 'released' then return { HOLD_NOT_ACTIVE, id, rec.st } end
  if rec.st == 'expired' then
    local short = shortfall(rec)
    if short then return short end
    reallocate(rec)
    apply_held(rec, 1)
    rec.st = 'held'
    redis.call('ZREM', K.finished, id)
  end
  rec.exp, rec.ext = math.max(rec.exp, NOW + ttl_ms), op_id
  local encoded = save(rec)
  redis.call('ZADD', K.expiry, rec.exp, id)
  hold_event(rec, 'extended')
  return { OK, encoded }
end

local replies, i = {}, 2
for n = 1, tonumber(ARGV[1]) do
  replies[n] = extend(ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]), ARGV[i + 3])
  i = i + 4
end
return replies
