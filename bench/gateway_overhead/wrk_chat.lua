-- wrk script for bench/gateway_overhead: POSTs one chat request per call and checks each answer.
-- Environment: WRK_BODY (JSON body), WRK_KEY (bearer key), WRK_MARKER (a string every good body holds:
-- '"choices"' for completions, '[DONE]' for streams). done() prints one line: WRKJSON {...}.
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

wrk.method = "POST"
wrk.body = os.getenv("WRK_BODY")
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("WRK_KEY") or "none")
local marker = os.getenv("WRK_MARKER") or '"choices"'

function init(args)
  bad = 0
end

function response(status, headers, body)
  if status ~= 200 or body == nil or not string.find(body, marker, 1, true) then
    bad = bad + 1
  end
end

function done(summary, latency, requests)
  local b = 0
  for _, t in ipairs(threads) do
    b = b + (t:get("bad") or 0)
  end
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect_errors":%d,"read_errors":%d,' ..
    '"write_errors":%d,"non2xx":%d,"timeouts":%d,"bad_bodies":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
    '"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout, b,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
