"""`agentq serve`: the dashboard service (REST, a WebSocket event stream per round, /metrics, a static page).

It reads a round's artifacts only through agentq.store, so the same service shows an embedded round in a
local directory and a cluster round in S3. It imports neither torch nor kubernetes: on Kubernetes, the
rounds' live status comes from controller.dashboard, which plugs a cluster reader into the same app.
"""
