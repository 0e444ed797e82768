-- Receive units into a location: on_hand goes up, one 'receive' move.
-- KEYS[1..7] partition keys   KEYS[7+n] idempotency record of op n
-- ARGV[1] JSON array of ops   ARGV[2] idempotency ttl_ms
-- each op: op id, fingerprint, sku, location, qty > 0, reason, actor, reference
-- Returns per op: {0, on_hand, committed, held} at the location, or {code, details...}
expire_due(-1)

local function receive(a)
  local sku, location, qty = a[3], a[4], a[5]
  local unknown = unknown_sku_or_location(sku, location)
  if unknown then return unknown end
  add(sku, location, 'on_hand', qty)
  move({ id = a[1] .. ':1', kind = 'receive', sku = sku, location = location, qty = qty,
         on_hand_delta = qty, committed_delta = 0, reason = a[6], actor = a[7], reference = a[8] })
  return location_reply(sku, location)
end

return each_stock_op(receive)
