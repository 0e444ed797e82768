-- Channel orders: an order a platform already took (and was paid for) becomes a committed
-- sale for that channel. It is never refused.
-- KEYS[1..7] partition keys   KEYS[7+n] idempotency record of op n
-- ARGV[1] JSON array of ops   ARGV[2] idempotency ttl_ms
-- ARGV[3] ms an order record outlives the finished-hold retention (so late cancels find it)
-- each op: op id, fingerprint, action ('sale' | 'cancel'), record id, channel, sku,
--          qty > 0 (sale), reference (the platform's order id), actor, this partition
-- Returns per op: {0, record JSON} or {code, details...}
--
-- sale: qty units of the SKU are committed for the channel from its locations in priority
--   order: first what its ATS covers; beyond that (a channel oversell) the free units at
--   those locations, buffers and other channels' allocations notwithstanding; what even
--   that cannot cover is unfilled and never committed, so committed + held <= on_hand holds.
--   The record (a confirmed hold with order = true) keeps the lines for a later cancel.
--   An oversell appends {"type": "oversell", sku, channel, qty, ats, shortfall, unfilled}.
-- cancel: the record's committed units return to sale ('cancel' moves), and to the
--   channel's allocation; the record's state becomes 'cancelled'.
expire_due(-1)

local function keep(rec)
  finished[rec.id] = NOW + tonumber(ARGV[3])
  return save(rec, rec.st == 'confirmed' and 'ordered' or 'cancelled')
end

-- Takes up to qty more free units at the channel's locations, beyond what lines already
-- took there (one line per location); returns what it could not take.
local function take_free(sku, channel, qty, lines)
  local at = {}
  for _, l in ipairs(lines) do at[l[2]] = l end
  for _, location in ipairs(catalog().channels[channel].locations) do
    local line = at[location]
    local take = math.min(qty, free_at(sku, location) - (line and line[3] or 0))
    if take > 0 then
      if line then line[3] = line[3] + take else lines[#lines + 1] = { sku, location, take } end
      qty = qty - take
    end
  end
  return qty
end

local function sale(a)
  local id, channel, sku, qty = a[4], a[5], a[6], a[7]
  if not catalog().channels[channel] then return { UNKNOWN_CHANNEL, channel } end
  local st = sku_settings(sku)
  if not st then return { UNKNOWN_SKU, sku } end
  local first = hold_record(id)  -- the same order line, after its op id was forgotten
  if first then return { OK, first } end
  local available, free = ats(sku, st, channel)
  local rec = { id = id, ch = channel, st = 'confirmed', exp = NOW, parts = a[10],
                ref = a[8], lines = {}, order = true }
  local within = math.min(qty, available)
  if within > 0 then allocate(sku, channel, within, free, rec.lines) end
  add(sku, channel, 'ordered', qty) -- what the platform took off its storefront (engine/channels/sync.py)
  local short = qty - within
  if short > 0 then
    rec.short, rec.unfilled = short, take_free(sku, channel, short, rec.lines)
    emit('oversell', { id = id, sku = sku, channel = channel, qty = qty, ats = available,
                       shortfall = short, unfilled = rec.unfilled, reference = a[8],
                       at_ms = NOW })
  end
  for _, l in ipairs(rec.lines) do
    add(l[1], l[2], 'committed', l[3])
    add_sold(l[1], channel, l[3])
    move({ id = id .. ':sale:' .. l[1] .. '@' .. l[2], kind = 'sale', sku = l[1],
           location = l[2], qty = l[3], on_hand_delta = 0, committed_delta = l[3],
           channel = channel, reference = rec.ref, actor = a[9], hold_id = id })
  end
  return { OK, keep(rec) }
end

local function cancel(a)
  local raw = hold_record(a[4])
  if not raw then return { HOLD_NOT_FOUND, a[4] } end
  local rec = cjson.decode(raw)
  if not rec.order then return { HOLD_NOT_FOUND, a[4] } end
  if rec.st == 'cancelled' then return { OK, raw } end
  for _, l in ipairs(rec.lines) do
    local _, committed = level(l[1], l[2])
    if l[3] > committed then return { INSUFFICIENT_COMMITTED, l[1], l[2], l[3], committed } end
  end
  for _, l in ipairs(rec.lines) do
    add(l[1], l[2], 'committed', -l[3])
    add_sold(l[1], rec.ch, -l[3])
    move({ id = rec.id .. ':cancel:' .. l[1] .. '@' .. l[2], kind = 'cancel', sku = l[1],
           location = l[2], qty = l[3], on_hand_delta = 0, committed_delta = -l[3],
           channel = rec.ch, reference = rec.ref, actor = a[9], hold_id = rec.id })
  end
  rec.st = 'cancelled'
  return { OK, keep(rec) }
end

return each_stock_op(function(a)
  if a[3] == 'sale' then return sale(a) end
  return cancel(a)
end)
