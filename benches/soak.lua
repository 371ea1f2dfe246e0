-- wrk script of benches/soak.py: rotates fixed search bodies and logs every answer.
--   wrk -t N -c N -s benches/soak.lua URL -- BODIES_FILE LOG_DIR
-- BODIES_FILE holds one JSON request body a line. Each thread writes LOG_DIR/thread-<n>.log, one
-- line per answer: body index, start and end (Unix ms), HTTP status, the answer's body.
-- soak.py runs one connection per thread: a connection carries one request at a time, so the
-- answers of a thread come back in the order its requests went out and a FIFO pairs them (wrk's
-- response callback does not say which request it answers). A socket error would break the
-- pairing; soak.py fails any run that has one. wrk also calls request() once on the first thread's
-- state before it starts, to check the script (script_verify_request), and never sends that one:
-- that call is not queued.
local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } soak_timespec;
int clock_gettime(int clock_id, soak_timespec *now);
]]
local CLOCK_REALTIME = 0 -- Python's time.time() clock, so soak.py can place answers in its phases
local timespec = ffi.new("soak_timespec")
local function now_ms()
  ffi.C.clock_gettime(CLOCK_REALTIME, timespec)
  return tonumber(timespec.tv_sec) * 1000 + tonumber(timespec.tv_nsec) / 1e6
end

-- Main state: number the threads.
local next_thread = 0
function setup(thread)
  next_thread = next_thread + 1
  thread:set("thread_number", next_thread)
end

-- Thread states.
local bodies = {}
local log
local pending = {}
local first, last = 1, 0
local sent = 0
local verify_call_pending = false
local headers = { ["Content-Type"] = "application/json" }

function init(args)
  for line in io.lines(args[1]) do
    if line ~= "" then
      bodies[#bodies + 1] = line
    end
  end
  log = assert(io.open(string.format("%s/thread-%d.log", args[2], thread_number), "w"))
  log:setvbuf("line")
  -- Threads start at different places of the list so the connections do not move in lockstep.
  sent = (thread_number - 1) * 7
  verify_call_pending = thread_number == 1
end

function request()
  if verify_call_pending then
    verify_call_pending = false
    return wrk.format("POST", "/v1/search", headers, bodies[1])
  end
  sent = sent + 1
  local index = sent % #bodies
  last = last + 1
  pending[last] = { index, now_ms() }
  return wrk.format("POST", "/v1/search", headers, bodies[index + 1])
end

function response(status, _, body)
  local sent_request = pending[first]
  pending[first] = nil
  first = first + 1
  if sent_request == nil then
    sent_request = { -1, 0 }
  end
  -- Bodies are one-line JSON; anything else is flattened so a line stays one answer.
  local flat = string.gsub(body or "", "[\r\n]", " ")
  log:write(string.format("%d\t%.3f\t%.3f\t%d\t%s\n", sent_request[1], sent_request[2], now_ms(),
    status, flat))
end

function done(summary, latency, _)
  io.write(string.format(
    '{"requests":%d,"connect_errors":%d,"read_errors":%d,"write_errors":%d,"timeouts":%d,' ..
    '"non_2xx":%d,"duration_s":%.1f,"p50_ms":%.2f,"p99_ms":%.2f,"max_ms":%.2f}\n',
    summary.requests, summary.errors.connect, summary.errors.read, summary.errors.write,
    summary.errors.timeout, summary.errors.status, summary.duration / 1e6,
    latency:percentile(50) / 1e3, latency:percentile(99) / 1e3, latency.max / 1e3))
end
