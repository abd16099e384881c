-- wrk script of load_tests/bench (wrk.py): POST the bytes of $WRK_BODY_FILE (JSON or a multipart
-- form) with Content-Type $WRK_CONTENT_TYPE on every request, count the answers by HTTP
-- status, and print one JSON line (prefix WRK_JSON) with the figures bench.py reads.

local body_file = assert(os.getenv("WRK_BODY_FILE"), "set WRK_BODY_FILE")
local f = assert(io.open(body_file, "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = os.getenv("WRK_CONTENT_TYPE") or "application/json"
-- more headers, one "Name: value" a line (the V2 binary extension's Inference-Header-Content-Length)
for name, value in string.gmatch(os.getenv("WRK_HEADERS") or "", "([^:\n]+):%s*([^\n]*)") do
  wrk.headers[name] = value
end

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  statuses = {}
end

function response(status, headers, body)
  local key = tostring(status)
  statuses[key] = (statuses[key] or 0) + 1
end

function done(summary, latency, requests)
  local counts = {}
  for _, thread in ipairs(threads) do
    local s = thread:get("statuses")
    if s then
      for code, n in pairs(s) do counts[code] = (counts[code] or 0) + n end
    end
  end
  local parts = {}
  for code, n in pairs(counts) do table.insert(parts, string.format('"%s": %d', code, n)) end
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"duration_us": %d, "requests": %d, "bytes": %d, '
      .. '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, '
      .. '"latency_us": {"mean": %.1f, "min": %d, "max": %d, "p50": %d, "p90": %d, "p95": %d, "p99": %d}, '
      .. '"statuses": {%s}}\n',
    summary.duration, summary.requests, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.min, latency.max,
    latency:percentile(50), latency:percentile(90), latency:percentile(95), latency:percentile(99),
    table.concat(parts, ", ")))
end
