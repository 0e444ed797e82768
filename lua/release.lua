-- Release holds: their units return to sale at once. Releasing a finished hold is a no-op.
-- The engine also uses it to end the parts of a multi-part hold that cannot go on, with the
-- state to record: 'rejected' (the hold was refused elsewhere) or 'expired' (a part could
-- not be revived); those also mark a part that has already expired.
-- KEYS[1..7] partition keys
-- ARGV[1] JSON array of ops: [hold id, state to record ('released' | 'rejected' | 'expired'),
--         fingerprint ('' = any; else only a hold placed with that payload), scope ('hold'|'part')]
-- Returns per op: {0, hold record JSON} or {code, details...}
expire_due(-1)

return each_op(function(op)
  local id, state, fp, scope = op[1], op[2], op[3], op[4]
  local raw = hold_record(id)
  if not raw then return { HOLD_NOT_FOUND, id } end
  local rec = cjson.decode(raw)
  if rec.st == 'rejected' then return { HOLD_NOT_FOUND, id } end
  if scope == 'hold' and is_multi_part(rec) then return { MULTI_PART, rec.parts } end
  if rec.st == 'confirmed' then return { HOLD_NOT_ACTIVE, id, rec.st } end
  if fp ~= '' and fp ~= rec.fp then return { OK, raw } end
  if rec.st == 'held' then
    apply_held(rec, -1)
    return { OK, finish(rec, state) }
  end
  if rec.st == 'expired' and state == 'rejected' then
    rec.st = state
    return { OK, save(rec, state) }
  end
  return { OK, raw }
end)
