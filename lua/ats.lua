-- Read ATS (available to sell) of many SKUs for one channel; unknown SKUs read as -1.
-- KEYS[1..7] partition keys
-- ARGV[1] channel   ARGV[2] '' or 'ordered'   ARGV[3..] skus
-- Returns {0, ats per sku...}, or with 'ordered' {0, ats, ordered, ats, ordered, ...} where
-- ordered is the units the channel's own orders took of the SKU so far (lua/order.lua), read
-- in the same instant; or {UNKNOWN_CHANNEL, channel}
expire_due(-1)

local channel, with_ordered = ARGV[1], ARGV[2] == 'ordered'
if not catalog().channels[channel] then return { UNKNOWN_CHANNEL, channel } end
local reply = { OK }
for i = 3, #ARGV do
  local sku = ARGV[i]
  local st = sku_settings(sku)
  reply[#reply + 1] = st and (ats(sku, st, channel)) or -1
  if with_ordered then
    local f = sku .. ':' .. channel .. ':ordered'
    reply[#reply + 1] = tonumber(redis.call('HGET', K.stock, f)) or 0
  end
end
return reply
