-- Release holds: their units return to sale at once. Releasing a finished hold is a no-op.
-- KEYS[1..7] partition keys
-- ARGV[1] JSON array of ops: [hold id, state to record ('released', or 'rejected' when the
--         engine undoes a part of a multi-part hold that failed elsewhere), fingerprint
--         ('' = any; else only a hold placed with that payload is released), scope ('hold'|'part')]
-- Returns per op: {0, hold record JSON} or {code, details...}
expire_due(-1)

return each_op(function(op)
  local id, state, fp, scope = op[1], op[2], op[3], op[4]
  local raw = redis.call('HGET', K.holds, id)
  if not raw then return { HOLD_NOT_FOUND, id } end
  local rec = cjson.decode(raw)
  if scope == 'hold' and is_multi_part(rec) then return { MULTI_PART, rec.parts } end
  if rec.st == 'confirmed' then return { HOLD_NOT_ACTIVE, id, rec.st } end
  if rec.st ~= 'held' or (fp ~= '' and fp ~= rec.fp) then return { OK, raw } end
  apply_held(rec, -1)
  return { OK, finish(rec, state) }
end)
