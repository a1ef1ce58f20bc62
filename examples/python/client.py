#!/usr/bin/env python3
"""A Leasehold client in Python, written from proto/leasehold/v1/leasehold.proto alone.

It applies an automation whose second node waits for approval, starts a run of it (twice with
the same request_id, to show that the repeat returns the same run), shows how a bad request is
answered, watches the run until it awaits approval, approves its gate, resumes the watch from
the last event it saw, and checks that the run completed. Any answer other than the one the
API promises ends it with exit status 1.

The stubs are generated, not kept in the repository (see README.md):

    python -m grpc_tools.protoc -I proto --python_out=OUT --grpc_python_out=OUT \\
        proto/leasehold/v1/leasehold.proto
    LEASEHOLD_TOKEN=lh_... PYTHONPATH=OUT python examples/python/client.py --endpoint 127.0.0.1:7233

Every call carries an API token (`authorization: Bearer lh_...`) of the admin role, since the
walk-through applies an automation: `leasehold dev` shows its own in its banner, and
`leasehold token create --role admin` makes others.
"""

import argparse
import collections
import os
import sys
import time
import uuid

import grpc
from google.protobuf import json_format, struct_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

try:
    from leasehold.v1 import leasehold_pb2 as pb
    from leasehold.v1 import leasehold_pb2_grpc as rpc
except ImportError as e:
    sys.exit(
        f"cannot import the generated stubs ({e}); generate them with grpc_tools.protoc and put "
        "their folder on PYTHONPATH, as examples/python/README.md shows"
    )

AUTOMATION_ID = "python-example"
# Every unary call gets a deadline, so that a coordinator that does not answer cannot hang us.
CALL_TIMEOUT_S = 10.0
# First wait before reconnecting a watch that broke; it doubles up to the maximum.
RECONNECT_DELAY_S = 0.2
RECONNECT_DELAY_MAX_S = 5.0


class _Details(
    collections.namedtuple(
        "_Details", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")
    ),
    grpc.ClientCallDetails,
):
    pass


class Bearer(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Adds `authorization: Bearer <token>` to every call."""

    def __init__(self, token):
        self._header = ("authorization", f"Bearer {token}")

    def _with_token(self, details):
        metadata = list(details.metadata or []) + [self._header]
        return _Details(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            details.wait_for_ready,
            details.compression,
        )

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._with_token(details), request)


class Unexpected(Exception):
    """An answer the API does not promise."""


def expect(condition, what):
    if not condition:
        raise Unexpected(what)


def value(obj):
    """A JSON-like Python value as a google.protobuf.Value."""
    return json_format.ParseDict(obj, struct_pb2.Value())


def struct(obj):
    """A dict as a google.protobuf.Struct."""
    return json_format.ParseDict(obj, struct_pb2.Struct())


SPEC = pb.AutomationSpec(
    id=AUTOMATION_ID,
    description="Prepare, wait for a person's approval, then ship.",
    nodes=[
        pb.NodeSpec(id="prepare", kind="echo", input=value({"message": "prepared"})),
        pb.NodeSpec(
            id="ship",
            kind="echo",
            depends_on=["prepare"],
            input=value({"message": "shipped"}),
            approval=pb.Approval(prompt="Ship it?"),
        ),
    ],
)


def name(enum, number):
    """An enum value's name, or its number if this client's stubs are older than the server."""
    try:
        return enum.Name(number)
    except ValueError:
        return str(number)


def field_violations(error):
    """The google.rpc.BadRequest field violations in a failed call's status details."""
    status = rpc_status.from_call(error)
    if status is None:
        return []
    violations = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            violations.extend(bad_request.field_violations)
    return violations


def show(event):
    line = f"  seq {event.seq:>3}  {event.event:<28} run {name(pb.RunStatus, event.run_status)}"
    if event.node_id:
        line += f", node {event.node_id}"
    if event.node_status != pb.NODE_STATUS_UNSPECIFIED:
        line += f" {name(pb.NodeStatus, event.node_status)}"
    if event.terminal:
        line += " (terminal)"
    print(line, flush=True)


def watch(runs, run_id, after_seq, deadline, stop_at=None):
    """Follows the run's events after `after_seq` and returns the last one seen.

    Returns as soon as `stop_at(event)` holds, or else when the server ends the stream (which it
    does once the run is terminal). A stream broken by UNAVAILABLE (a coordinator restarting)
    is opened again after the last seq seen, so nothing is missed and nothing repeats.
    """
    last = None
    delay = RECONNECT_DELAY_S
    while True:
        left = deadline - time.monotonic()
        expect(left > 0, f"the run did not get there in time (last event: {last and last.event})")
        request = pb.WatchRunRequest(run_id=run_id, after_seq=after_seq)
        call = runs.WatchRun(request, timeout=left)
        try:
            for event in call:
                expect(
                    event.seq == after_seq + 1,
                    f"event {event.seq} followed event {after_seq}: a gap or a repeat",
                )
                after_seq = event.seq
                last = event
                delay = RECONNECT_DELAY_S
                show(event)
                if stop_at is not None and stop_at(event):
                    call.cancel()
                    return last
            return last
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE:
                raise
            print(f"  watch: {error.details()}; reconnecting after event {after_seq}")
            time.sleep(delay)
            delay = min(delay * 2, RECONNECT_DELAY_MAX_S)


def apply_automation(automations):
    automation = automations.ApplyAutomation(
        pb.ApplyAutomationRequest(spec=pb.SpecSource(structured=SPEC)), timeout=CALL_TIMEOUT_S
    )
    print(
        f"automation {automation.id} v{automation.current_version} "
        f"({'new version' if automation.version_created else 'unchanged'}), "
        f"{name(pb.AutomationStatus, automation.status)}"
    )
    for warning in automation.warnings:
        print(f"  warning: {warning.field}: {warning.message}")
    # Both kinds are built in, so no warning is due.
    expect(not automation.warnings, "warnings for built-in node kinds")
    expect(
        automation.status == pb.AUTOMATION_STATUS_ACTIVE,
        f"automation is {name(pb.AutomationStatus, automation.status)}",
    )


def start_run(runs):
    """Starts the run, then repeats the request to show that it is safe to retry."""
    request = pb.StartRunRequest(
        automation_id=AUTOMATION_ID,
        inputs=struct({"customer": "ada", "items": 3}),
        request_id=f"python-example-{uuid.uuid4()}",
    )
    first = runs.StartRun(request, timeout=CALL_TIMEOUT_S)
    expect(first.created, "a fresh request_id did not start a run")
    run = first.run
    print(f"started run {run.run_id}: {name(pb.RunStatus, run.status)}, created={first.created}")
    expect(
        [n.node_id for n in run.nodes] == ["prepare", "ship"],
        f"run nodes {[n.node_id for n in run.nodes]}",
    )
    again = runs.StartRun(request, timeout=CALL_TIMEOUT_S)
    print(f"same request_id again: run {again.run.run_id}, created={again.created}")
    expect(not again.created, "a repeated request_id started another run")
    expect(again.run.run_id == run.run_id, "a repeated request_id returned another run")
    return run.run_id


def show_bad_request(runs):
    """A batch whose second request is out of range: refused whole, naming the field."""
    key = f"python-example-{uuid.uuid4()}"
    batch = pb.StartRunsRequest(
        requests=[
            pb.StartRunRequest(automation_id=AUTOMATION_ID, concurrency_key=key),
            pb.StartRunRequest(automation_id=AUTOMATION_ID, priority=5000),
        ]
    )
    try:
        runs.StartRuns(batch, timeout=CALL_TIMEOUT_S)
    except grpc.RpcError as error:
        violations = field_violations(error)
        print(f"bad request refused: {error.code().name}: {error.details()}")
        for violation in violations:
            print(f"  field violation: {violation.field}: {violation.description}")
        expect(
            error.code() == grpc.StatusCode.INVALID_ARGUMENT,
            f"a priority of 5000 answered {error.code().name}",
        )
        expect(
            [v.field for v in violations] == ["requests[1].priority"],
            f"field violations {[v.field for v in violations]}",
        )
    else:
        raise Unexpected("a priority of 5000 was accepted")
    # All or nothing: the valid first request did not start a run either.
    listed = runs.ListRuns(pb.ListRunsRequest(concurrency_key=key), timeout=CALL_TIMEOUT_S)
    expect(not listed.runs, "a refused batch started a run")


def approve(runs, gates, run_id):
    """Approves the run's pending gate, twice with one request_id to show the same answer."""
    run = runs.GetRun(pb.GetRunRequest(run_id=run_id), timeout=CALL_TIMEOUT_S)
    pending = [g for g in run.gates if g.status == pb.GATE_STATUS_PENDING]
    expect(len(pending) == 1, f"{len(pending)} pending gates")
    gate = pending[0]
    expect(gate.node_id == "ship", f"the gate is before node {gate.node_id}")
    print(f"gate {gate.gate_id} before {gate.node_id}: {gate.prompt!r}")
    request = pb.DecideGateRequest(
        gate_id=gate.gate_id,
        decision=pb.DECISION_APPROVE,
        reason="looks good",
        # decided_by is left empty: the coordinator records the token's name.
        request_id=f"python-example-{uuid.uuid4()}",
    )
    decided = gates.DecideGate(request, timeout=CALL_TIMEOUT_S)
    print(f"decided: {name(pb.GateStatus, decided.status)} by {decided.decided_by}")
    expect(decided.status == pb.GATE_STATUS_APPROVED, "the approval did not approve")
    again = gates.DecideGate(request, timeout=CALL_TIMEOUT_S)
    print(f"same request_id again: {name(pb.GateStatus, again.status)}")
    expect(again == decided, "a repeated decision got another answer")


def check_completed(runs, run_id):
    run = runs.GetRun(pb.GetRunRequest(run_id=run_id), timeout=CALL_TIMEOUT_S)
    expect(run.status == pb.RUN_STATUS_COMPLETED, f"GetRun says {name(pb.RunStatus, run.status)}")
    for node in run.nodes:
        output = json_format.MessageToDict(node.output)
        print(f"  node {node.node_id}: {name(pb.NodeStatus, node.status)}, output {output}")
        expect(node.status == pb.NODE_STATUS_COMPLETED, f"node {node.node_id} is not completed")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoint", default="127.0.0.1:7233", help="the coordinator, host:port")
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="seconds the whole walk-through may take"
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("LEASEHOLD_TOKEN"),
        help="the API token (default: $LEASEHOLD_TOKEN)",
    )
    args = parser.parse_args()
    if not args.token:
        print("give an API token with --token or LEASEHOLD_TOKEN", file=sys.stderr)
        return 1
    deadline = time.monotonic() + args.timeout

    with grpc.insecure_channel(args.endpoint) as plain:
        try:
            grpc.channel_ready_future(plain).result(timeout=CALL_TIMEOUT_S)
        except grpc.FutureTimeoutError:
            print(f"cannot reach a coordinator at {args.endpoint}", file=sys.stderr)
            return 1
        channel = grpc.intercept_channel(plain, Bearer(args.token))
        automations = rpc.AutomationsStub(channel)
        runs = rpc.RunsStub(channel)
        gates = rpc.GatesStub(channel)
        try:
            apply_automation(automations)
            run_id = start_run(runs)
            show_bad_request(runs)

            print("watching until the run awaits approval:")
            waiting = watch(
                runs,
                run_id,
                0,
                deadline,
                stop_at=lambda e: e.run_status == pb.RUN_STATUS_AWAITING_APPROVAL,
            )
            expect(
                waiting is not None and waiting.run_status == pb.RUN_STATUS_AWAITING_APPROVAL,
                "the stream ended before the run awaited approval",
            )
            expect(not waiting.terminal, "awaiting approval is not terminal")

            approve(runs, gates, run_id)

            print(f"watching again after event {waiting.seq} until the stream ends:")
            last = watch(runs, run_id, waiting.seq, deadline)
            expect(last is not None, "no event after the approval")
            expect(last.terminal, f"the stream ended after {last.event}, which is not terminal")
            expect(
                last.run_status == pb.RUN_STATUS_COMPLETED,
                f"the run ended {name(pb.RunStatus, last.run_status)}",
            )
            check_completed(runs, run_id)
        except Unexpected as e:
            print(f"unexpected: {e}", file=sys.stderr)
            return 1
        except grpc.RpcError as error:
            print(f"unexpected error: {error.code().name}: {error.details()}", file=sys.stderr)
            return 1
    print(f"run {run_id} completed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
