-- Record whether the sale's SKUs have any ATS left for its channel (engine/sales.py checks).
-- KEYS[1..6] sale keys (lua/sale_lib.lua)
-- ARGV[1] '1' sold out | '0' units available
-- Returns {OK, admitted so far, queue length, live admissions, sold out (0|1)}
redis.call('HSET', S.state, 'sold_out', ARGV[1])
admit()
return { OK, tonumber(redis.call('HGET', S.state, 'admitted')) or 0, redis.call('ZCARD', S.queue),
         redis.call('ZCARD', S.active), tonumber(ARGV[1]) }
