-- Confirm holds: their units move from held to committed, one 'sale' move per line.
-- A hold that expired is confirmed only if the channel's ATS still covers every line.
-- KEYS[1..7] partition keys
-- ARGV[1] JSON array of ops: [hold id, reference ('' = the hold id), actor,
--         scope ('hold': the whole hold must live here, else MULTI_PART; 'part': this part)]
-- Returns per op: {0, hold record JSON} or {code, details...};
--         SHORTFALL is {8, hold id, sku, missing, ...}
expire_due(-1)

-- Move ids name the hold, SKU and location: unique across the parts of a multi-part hold.
local function commit(rec, actor)
  for _, l in ipairs(rec.lines) do
    add(l[1], l[2], 'committed', l[3])
    add_sold(l[1], rec.ch, l[3])
    move({ id = rec.id .. ':sale:' .. l[1] .. '@' .. l[2], kind = 'sale', sku = l[1],
           location = l[2], qty = l[3], on_hand_delta = 0, committed_delta = l[3],
           channel = rec.ch, reference = rec.ref, actor = actor, hold_id = rec.id })
  end
  return { OK, finish(rec, 'confirmed') }
end

return each_op(function(op)
  local id, ref, actor, scope = op[1], op[2], op[3], op[4]
  local raw = hold_record(id)
  if not raw then return { HOLD_NOT_FOUND, id } end
  local rec = cjson.decode(raw)
  if rec.st == 'rejected' then return { HOLD_NOT_FOUND, id } end
  if scope == 'hold' and is_multi_part(rec) then return { MULTI_PART, rec.parts } end
  if ref == '' then ref = id end
  if rec.st == 'confirmed' then
    if rec.ref ~= ref then return { IDEMPOTENCY_CONFLICT, id } end
    return { OK, raw }
  end
  if rec.st == 'released' then return { HOLD_NOT_ACTIVE, id, rec.st } end
  rec.ref = ref
  if rec.st == 'held' then
    apply_held(rec, -1)
    return commit(rec, actor)
  end
  local short = reallocate(rec)
  if short then return short end
  return commit(rec, actor)
end)
