-- Define a SKU or change its settings: buffer, one channel's policy, or the buffer override.
-- KEYS[1..7] partition keys
-- ARGV[1] sku   ARGV[2] field: 'define' | 'policy' | 'override'
-- ARGV[3] 'define': buffer (int >= 0); 'policy': channel; 'override': JSON [start_ms, end_ms, qty] or ''
-- ARGV[4] 'policy': JSON {kind, qty, buffer} or '' to fall back to the channel's default
-- Returns {0, settings JSON} or {code, details...}
local sku, field = ARGV[1], ARGV[2]
local st = sku_settings(sku)
if field == 'define' then
  st = st or { buffer = 0 }
  st.buffer = tonumber(ARGV[3])
elseif not st then
  return { UNKNOWN_SKU, sku }
elseif field == 'policy' then
  if not catalog().channels[ARGV[3]] then return { UNKNOWN_CHANNEL, ARGV[3] } end
  st.policies = st.policies or {}
  st.policies[ARGV[3]] = ARGV[4] ~= '' and cjson.decode(ARGV[4]) or nil
  if next(st.policies) == nil then st.policies = nil end
elseif field == 'override' then
  st.override = ARGV[3] ~= '' and cjson.decode(ARGV[3]) or nil
end
local encoded = cjson.encode(st)
redis.call('HSET', K.skus, sku, encoded)
emit('sku', { sku = sku, settings = st })
commit()
return { OK, encoded }
