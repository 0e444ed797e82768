-- Join a sale's queue: one live ticket per customer (joining again returns it while it
-- waits or is admitted; after its hold, a customer joins again at the back).
-- KEYS[1..6] sale keys (lua/sale_lib.lua)
-- ARGV[1] new ticket id   ARGV[2] customer key   ARGV[3] random place below 2^41, used
--         for a join before the start when the sale randomises those
-- Returns a ticket status (see status()) or {SALE_ENDED, sale, end_ms}
local id, ck, draw = ARGV[1], ARGV[2], tonumber(ARGV[3])
if NOW >= C.end_ms then return { SALE_ENDED, C.name, C.end_ms } end
admit()
local existing = redis.call('HGET', S.customers, ck)
if existing then
  local t = ticket(existing)
  if t.st == 'waiting' or (t.st == 'admitted' and t.exp > NOW) then return status(existing, t) end
end
if sold_out() then return { OK, '', 'sold_out', 0, 0 } end
local seq = redis.call('HINCRBY', S.state, 'seq', 1)
local place = AFTER_START + seq
if NOW < C.start_ms and C.randomize then place = draw end
put(id, { ck = ck, st = 'waiting', joined = NOW, polled = NOW, seq = seq })
redis.call('ZADD', S.queue, place, id)
redis.call('HSET', S.customers, ck, id)
admit()
return status(id, ticket(id))
