-- GET /healthz: no database, so this is the cost of gunicorn + Flask alone (bench/http.py baseline).
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "common.lua")
