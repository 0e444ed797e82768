-- Read one SKU's stock per location and its ATS for each named channel.
-- KEYS[1..7] partition keys
-- ARGV[1] sku   ARGV[2..] channels
-- Returns {0, settings JSON, location count n, n x (location, on_hand, committed, held, available),
--          then one ATS per channel}, or {code, details...}
expire_due(-1)

local sku = ARGV[1]
local st = sku_settings(sku)
if not st then return { UNKNOWN_SKU, sku } end
local cat = catalog()
for i = 2, #ARGV do
  if not cat.channels[ARGV[i]] then return { UNKNOWN_CHANNEL, ARGV[i] } end
end
local locations = {}
for location, _ in pairs(cat.locations) do locations[#locations + 1] = location end
table.sort(locations)
local reply = { OK, cjson.encode(st), #locations }
for _, location in ipairs(locations) do
  local on_hand, committed, held = level(sku, location)
  for _, v in ipairs({ location, on_hand, committed, held, free_at(sku, location) }) do
    reply[#reply + 1] = v
  end
end
for i = 2, #ARGV do reply[#reply + 1] = (ats(sku, st, ARGV[i])) end
return reply
