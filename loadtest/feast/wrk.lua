-- wrk script for `bench.py feast`: POST /get-online-features for the feature service, one user
-- drawn uniformly at random per request, as fg-load draws them against the gateway.
--
--   wrk -t1 -c16 -d10s -s wrk.lua http://127.0.0.1:PORT -- POPULATION WIDTH SEED
--
-- done() prints one line, "wrk-json {...}": requests, errors and latency percentiles in µs.

local population, body = 100000, nil

function init(args)
  population = tonumber(args[1] or population)
  body = '{"feature_service":"user_stats_v1","entities":{"user_id":["u_%0' .. (args[2] or "6") .. 'd"]}}'
  math.randomseed(tonumber(args[3] or 42))
  wrk.method = "POST"
  wrk.path = "/get-online-features"
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  return wrk.format(nil, nil, nil, string.format(body, math.random(0, population - 1)))
end

function done(summary, latency, requests)
  local e = summary.errors
  local ps = {}
  for _, p in ipairs({50, 75, 90, 95, 99, 99.9, 99.99}) do
    table.insert(ps, string.format("[%g,%d]", p, latency:percentile(p)))
  end
  io.write(string.format(
    'wrk-json {"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,' ..
    '"timeout":%d,"max_us":%d,"percentiles":[%s]}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency.max, table.concat(ps, ",")))
end
