-- Settle expired holds (releasing their units, one 'expired' event each) and forget
-- finished hold records past their retention. Cost: O(log n + work done), never all holds.
-- KEYS[1..7] partition keys
-- ARGV[1] most holds to expire   ARGV[2] retention_ms of finished holds   ARGV[3] most to forget
-- Returns {expired, forgotten, expired holds still due}
local expired = expire_due(tonumber(ARGV[1]))
local old = redis.call('ZRANGEBYSCORE', K.finished, '-inf', NOW - tonumber(ARGV[2]),
                       'LIMIT', 0, tonumber(ARGV[3]))
if #old > 0 then
  redis.call('HDEL', K.holds, unpack(old))
  redis.call('ZREM', K.finished, unpack(old))
end
return { expired, #old, redis.call('ZCOUNT', K.expiry, '-inf', NOW) }
