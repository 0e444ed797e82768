-- Ship committed units: on_hand and committed both go down, one 'ship' move.
-- KEYS[1..7] partition keys   KEYS[7+n] idempotency record of op n
-- ARGV[1] JSON array of ops   ARGV[2] idempotency ttl_ms
-- each op: op id, fingerprint, sku, location, qty > 0, reason, actor, reference (order)
-- Returns per op: {0, on_hand, committed, held} or {code, details...}
expire_due(-1)

local function ship(a)
  local sku, location, qty = a[3], a[4], a[5]
  local unknown = unknown_sku_or_location(sku, location)
  if unknown then return unknown end
  local _, committed = level(sku, location)
  if qty > committed then return { INSUFFICIENT_COMMITTED, sku, location, qty, committed } end
  add(sku, location, 'on_hand', -qty)
  add(sku, location, 'committed', -qty)
  move({ id = a[1] .. ':1', kind = 'ship', sku = sku, location = location, qty = qty,
         on_hand_delta = -qty, committed_delta = -qty, reason = a[6], actor = a[7], reference = a[8] })
  return location_reply(sku, location)
end

return each_stock_op(ship)
