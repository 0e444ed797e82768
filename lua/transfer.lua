-- Transfer available units between two locations of one SKU: two 'transfer' moves, out and in.
-- KEYS[1..7] partition keys   KEYS[7+n] idempotency record of op n
-- ARGV[1] JSON array of ops   ARGV[2] idempotency ttl_ms
-- each op: op id, fingerprint, sku, from location, qty > 0, reason, actor, reference, to location
-- Returns per op: {0, on_hand, committed, held} at the destination, or {code, details...}
expire_due(-1)

local function transfer(a)
  local sku, from, qty, to = a[3], a[4], a[5], a[9]
  local unknown = unknown_sku_or_location(sku, from, to)
  if unknown then return unknown end
  local free = free_at(sku, from)
  if qty > free then return { INSUFFICIENT_STOCK, sku, qty, free } end
  add(sku, from, 'on_hand', -qty)
  add(sku, to, 'on_hand', qty)
  for n, leg in ipairs({ { from, -qty }, { to, qty } }) do
    move({ id = a[1] .. ':' .. n, kind = 'transfer', sku = sku, location = leg[1], qty = qty,
           on_hand_delta = leg[2], committed_delta = 0, reason = a[6], actor = a[7],
           reference = a[8] })
  end
  return location_reply(sku, to)
end

return each_stock_op(transfer)
