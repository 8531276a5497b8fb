"""The fleet simulator: a trace's requests through a gateway, routers and replicas.

A request's path (`run.run_replay` wires it up; `loop.simulate` drives it):

1. The trace is streamed in record batches; each row becomes a `request.Seq` with its tier
   resolved (an unknown trace tier is the scenario's default tier).
2. `gateway.Gateway` admits it: latency, the tenant's and tier's token buckets
   (`ratelimit`), client retries, deferral of a deferred tier until its pools have headroom.
   A scenario that asks none of this gets a pass-through gateway.
3. The tier's `balancer.Router` picks a replica of its pools (`balancer`: the policies).
4. The `replica.Replica` queues it; its batcher (`batcher`: vLLM, Sarathi, Orca, static)
   chooses each step's prefill chunks, `kvcache.KVCache` counts its KV blocks, and
   `perf.steptime.StepTime` prices each step. The replica reports what it did to its timeline
   recorder (`records.timeline`). `autoscale` adds and removes replicas of a pool.
5. When it ends (finished, too long, rate limited, expired) it goes to `records.requests`;
   after the run, `records.pools` prices each pool (`cost`), `records.requests` attributes
   that cost to requests and prices their revenue (`tiers`), and `records.summary` sums up.

`scenario` (with `tables` and `plugins`) reads the scenario file; `fleet` sizes and assembles
the replicas, routers, gateway and autoscalers.

Time words, from short to long:

- *step*: one forward pass of a replica's batch (prefill chunks plus one token per decoder).
- *run*: consecutive decode-only steps a replica advances over in one event (cut short by an
  arrival, a finish or a full cache); in --step-by-step mode every run is one step.
- *piece*: a stretch of decode-only steps whose ends have one closed form
  (`perf.decode.DecodePiece`); a run lies inside a piece.
- *segment*: a maximal stretch of decode-only steps with the same batch, over which decoders'
  GPU time is charged at once (it may span several runs and pieces).
- *interval*: a fixed slice of simulated time (`interval_s`), one timeline row per replica.
- *span*: a replica's provisioned time, from when it is asked for to when it is released.
- *the end of the run* (`end_s`): its last event (the last finish, or the last arrival if
  later); the fleet is charged up to it, and the last interval ends there.
"""
