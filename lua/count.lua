-- Record a stock count: on_hand becomes the counted quantity through one 'count' move whose
-- delta is counted - on_hand. Live holds and committed units are kept, so a count below
-- committed + held is refused: release holds or cancel orders first.
-- KEYS[1..7] partition keys   KEYS[7+n] idempotency record of op n
-- ARGV[1] JSON array of ops   ARGV[2] idempotency ttl_ms
-- each op: op id, fingerprint, sku, location, counted (int >= 0), reason, actor, reference
-- Returns per op: {0, on_hand, committed, held} or {code, details...}
expire_due(-1)

local function count(a)
  local sku, location, counted = a[3], a[4], a[5]
  local unknown = unknown_sku_or_location(sku, location)
  if unknown then return unknown end
  local on_hand, committed, held = level(sku, location)
  if counted < committed + held then
    return { COUNT_BELOW_RESERVED, sku, location, counted, committed + held }
  end
  local delta = counted - on_hand
  add(sku, location, 'on_hand', delta)
  move({ id = a[1] .. ':1', kind = 'count', sku = sku, location = location, qty = counted,
         on_hand_delta = delta, committed_delta = 0, reason = a[6], actor = a[7], reference = a[8] })
  return location_reply(sku, location)
end

return each_stock_op(count)
