-- wrk script: scripts/beacon.lua's beacons, each with its own event_id (as
-- the browser tracker sends them): what deduplication checks. Ids are
-- unique across runs (a run prefix from the clock), so no event is a retry.
wrk.method = "POST"
wrk.headers["Content-Type"] = "text/plain;charset=UTF-8"
local run = string.format("%d-%d", os.time(), math.floor(os.clock() * 1e6))
local n = 0
request = function()
  n = n + 1
  local body = string.format('{"type":"page_view","client_id":"v-%d","event_id":"%s-%d","url":"https://shop.example/item/%d?utm_source=news","referrer":"https://www.example.org/search","props":{"title":"xxxxxx xxxxxx xxxxxx xxxxxx xxxxxx xxxxxx","price":1200,"currency":"JPY","qty":1}}', n % 100000, run, n, n % 977)
  return wrk.format(nil, "/v1/events", nil, body)
end
