-- Store this partition's copy of the catalog (locations and channels) if it is newer.
-- KEYS[1..7] partition keys
-- ARGV[1] catalog JSON with an integer "version"
-- Returns {0, version now stored}
local doc = cjson.decode(ARGV[1])
local current = catalog().version or 0
if doc.version > current then
  redis.call('SET', K.catalog, ARGV[1])
  emit_json('{"type":"catalog","catalog":' .. ARGV[1] .. '}')
  flush_outbox()
  return { OK, doc.version }
end
return { OK, current }
