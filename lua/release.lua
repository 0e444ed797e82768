-- Release holds: their units return to sale at once. Releasing twice is a no-op.
-- KEYS[1..10] partition keys
-- ARGV[1] op count; per op: hold id, state to record ('released', or 'rejected' when the
--         engine undoes a part of a multi-part hold that failed elsewhere), scope ('hold'|'part')
-- Returns per op: {0, hold record JSON} or {code, details...}
expire_due(-1)

local function release(id, state, scope)
  local raw = redis.call('HGET', K.holds, id)
  if not raw then return { HOLD_NOT_FOUND, id } end
  local rec = cjson.decode(raw)
  if scope == 'hold' and is_multi_part(rec) then return { MULTI_PART, rec.parts } end
  if rec.st == 'confirmed' then return { HOLD_NOT_ACTIVE, id, rec.st } end
  if rec.st ~= 'held' then return { OK, raw } end
  apply_held(rec, -1)
  return { OK, finish(rec, state) }
end

local replies, i = {}, 2
for n = 1, tonumber(ARGV[1]) do
  replies[n] = release(ARGV[i], ARGV[i + 1], ARGV[i + 2])
  i = i + 3
end
return replies
