-- Accept a channel delivery once: remember its id and append it to the inbox stream, together.
-- KEYS[1] the inbox stream   KEYS[2] the delivery's seen-marker (same slot: the {inbox} tag)
-- ARGV[1] how long to remember the id, ms (longer than the platform retries)
-- ARGV[2] channel   ARGV[3] the delivery, JSON   ARGV[4] when it was received, ms
-- Returns 1 if accepted, 0 if the id was seen before (a duplicate: nothing is added).
if not redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[1]) then return 0 end
redis.call('XADD', KEYS[1], '*', 'channel', ARGV[2], 'delivery', ARGV[3], 'at_ms', ARGV[4])
return 1
