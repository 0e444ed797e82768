-- Cancel committed units before shipment: committed goes down, the units return to sale.
-- KEYS[1..10] partition keys   KEYS[10+n] idempotency record of op n
-- ARGV[1] op count   ARGV[2] idempotency ttl_ms
-- per op: op id, fingerprint, sku, location, qty > 0, reason, actor, reference (order)
-- Returns per op: {0, on_hand, committed, held} or {code, details...}
expire_due(-1)

local function cancel(a)
  local sku, location, qty = a[3], a[4], tonumber(a[5])
  local unknown = unknown_sku_or_location(sku, location)
  if unknown then return unknown end
  local f = sku .. ':' .. location
  local committed = hget_int(K.committed, f)
  if qty > committed then return { INSUFFICIENT_COMMITTED, sku, location, qty, committed } end
  hincr(K.committed, f, -qty)
  move({ id = a[1] .. ':1', kind = 'cancel', sku = sku, location = location, qty = qty,
         on_hand_delta = 0, committed_delta = -qty, reason = a[6], actor = a[7], reference = a[8] })
  return location_reply(sku, location)
end

return each_stock_op(8, cancel)
