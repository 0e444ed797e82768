-- Extend holds to at least now + ttl_ms. An expired hold is revived only if the
-- channel's ATS still covers every line; a hold is never shortened.
-- KEYS[1..7] partition keys
-- ARGV[1] JSON array of ops: [hold id, op id, ttl_ms, scope ('hold'|'part')]
-- Returns per op: {0, hold record JSON} or {code, details...}
expire_due(-1)

return each_op(function(op)
  local id, op_id, ttl_ms, scope = op[1], op[2], op[3], op[4]
  local raw = hold_record(id)
  if not raw then return { HOLD_NOT_FOUND, id } end
  local rec = cjson.decode(raw)
  if rec.st == 'rejected' then return { HOLD_NOT_FOUND, id } end
  if scope == 'hold' and is_multi_part(rec) then return { MULTI_PART, rec.parts } end
  if rec.ext == op_id then return { OK, raw } end
  if rec.st == 'confirmed' or rec.st == 'released' then return { HOLD_NOT_ACTIVE, id, rec.st } end
  if rec.st == 'expired' then
    local short = reallocate(rec)
    if short then return short end
    apply_held(rec, 1)
    track_limit(rec, rec.st, 'held')
    rec.st = 'held'
    finished[id] = false
  end
  rec.exp, rec.ext = math.max(rec.exp, NOW + ttl_ms), op_id
  expiry[id] = rec.exp
  return { OK, save(rec, 'extended') }
end)
