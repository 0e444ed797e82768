-- Adjust on_hand by a signed delta with a reason (damage, found, correction), one 'adjust' move.
-- A decrease may not take on_hand below committed + held.
-- KEYS[1..7] partition keys   KEYS[7+n] idempotency record of op n
-- ARGV[1] JSON array of ops   ARGV[2] idempotency ttl_ms
-- each op: op id, fingerprint, sku, location, delta (int != 0), reason, actor, reference
-- Returns per op: {0, on_hand, committed, held} or {code, details...}
expire_due(-1)

local function adjust(a)
  local sku, location, delta = a[3], a[4], a[5]
  local unknown = unknown_sku_or_location(sku, location)
  if unknown then return unknown end
  local free = free_at(sku, location)
  if -delta > free then return { INSUFFICIENT_STOCK, sku, -delta, free } end
  add(sku, location, 'on_hand', delta)
  move({ id = a[1] .. ':1', kind = 'adjust', sku = sku, location = location, qty = math.abs(delta),
         on_hand_delta = delta, committed_delta = 0, reason = a[6], actor = a[7], reference = a[8] })
  return location_reply(sku, location)
end

return each_stock_op(adjust)
