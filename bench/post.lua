-- wrk script: POST an OpenAI chat request and print a machine-readable summary.
-- Environment: BENCH_MODEL (default "bench"), BENCH_STREAM=1 for "stream":true,
-- BENCH_KEY (default "gnd_benchkey").
local model = os.getenv("BENCH_MODEL") or "bench"
local stream = os.getenv("BENCH_STREAM") == "1"
local key = os.getenv("BENCH_KEY") or "gnd_benchkey"

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. key
wrk.body = '{"model":"' .. model .. '","messages":[{"role":"user","content":"hello"}]'
  .. (stream and ',"stream":true' or '') .. '}'

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,'
    .. '"write":%d,"status":%d,"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,'
    .. '"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean))
end
