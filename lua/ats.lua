-- Read ATS (available to sell) of many SKUs for one channel; unknown SKUs read as -1.
-- KEYS[1..7] partition keys
-- ARGV[1] channel   ARGV[2..] skus
-- Returns {0, ats per sku...} or {UNKNOWN_CHANNEL, channel}
expire_due(-1)

local channel = ARGV[1]
if not catalog().channels[channel] then return { UNKNOWN_CHANNEL, channel } end
local reply = { OK }
for i = 2, #ARGV do
  local st = sku_settings(ARGV[i])
  reply[i] = st and (ats(ARGV[i], st, channel)) or -1
end
return reply
