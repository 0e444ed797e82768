-- Take back shipped units: 'restock' puts them on_hand ('return_restock' move); 'damaged'
-- writes them off with a reason ('return_damaged' move, no stock change).
-- KEYS[1..7] partition keys   KEYS[7+n] idempotency record of op n
-- ARGV[1] JSON array of ops   ARGV[2] idempotency ttl_ms
-- each op: op id, fingerprint, sku, location, qty > 0, reason, actor, reference, disposition
-- Returns per op: {0, on_hand, committed, held} or {code, details...}
expire_due(-1)

local function take_back(a)
  local sku, location, qty, disposition = a[3], a[4], a[5], a[9]
  local unknown = unknown_sku_or_location(sku, location)
  if unknown then return unknown end
  local delta = 0
  if disposition == 'restock' then delta = qty end
  add(sku, location, 'on_hand', delta)
  move({ id = a[1] .. ':1', kind = 'return_' .. disposition, sku = sku, location = location,
         qty = qty, on_hand_delta = delta, committed_delta = 0, reason = a[6], actor = a[7],
         reference = a[8] })
  return location_reply(sku, location)
end

return each_stock_op(take_back)
