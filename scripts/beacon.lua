-- wrk script: sendBeacon-style single events with 100,000 rotating visitors.
-- Used by scripts/bench for the closed-loop throughput ceiling.
wrk.method = "POST"
wrk.headers["Content-Type"] = "text/plain;charset=UTF-8"
local n = 0
request = function()
  n = n + 1
  local body = string.format('{"type":"page_view","client_id":"v-%d","url":"https://shop.example/item/%d?utm_source=news","referrer":"https://www.example.org/search","props":{"title":"xxxxxx xxxxxx xxxxxx xxxxxx xxxxxx xxxxxx","price":1200,"currency":"JPY","qty":1}}', n % 100000, n % 977)
  return wrk.format(nil, "/v1/events", nil, body)
end
