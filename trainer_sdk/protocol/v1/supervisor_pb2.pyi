from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ParamType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PARAM_TYPE_UNSPECIFIED: _ClassVar[ParamType]
    PARAM_TYPE_FLOAT: _ClassVar[ParamType]
    PARAM_TYPE_INT: _ClassVar[ParamType]
    PARAM_TYPE_BOOL: _ClassVar[ParamType]
    PARAM_TYPE_CHOICE: _ClassVar[ParamType]
    PARAM_TYPE_STRING: _ClassVar[ParamType]

class RunOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUN_OUTCOME_UNSPECIFIED: _ClassVar[RunOutcome]
    RUN_OUTCOME_COMPLETED: _ClassVar[RunOutcome]
    RUN_OUTCOME_FAILED: _ClassVar[RunOutcome]

class ChangeKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHANGE_KIND_UNSPECIFIED: _ClassVar[ChangeKind]
    CHANGE_KIND_SET: _ClassVar[ChangeKind]
    CHANGE_KIND_TRIGGER: _ClassVar[ChangeKind]
    CHANGE_KIND_ADOPT: _ClassVar[ChangeKind]
    CHANGE_KIND_PROPOSAL: _ClassVar[ChangeKind]
    CHANGE_KIND_REFUSED: _ClassVar[ChangeKind]
    CHANGE_KIND_POLICY_ERROR: _ClassVar[ChangeKind]
    CHANGE_KIND_RELEASE: _ClassVar[ChangeKind]
PARAM_TYPE_UNSPECIFIED: ParamType
PARAM_TYPE_FLOAT: ParamType
PARAM_TYPE_INT: ParamType
PARAM_TYPE_BOOL: ParamType
PARAM_TYPE_CHOICE: ParamType
PARAM_TYPE_STRING: ParamType
RUN_OUTCOME_UNSPECIFIED: RunOutcome
RUN_OUTCOME_COMPLETED: RunOutcome
RUN_OUTCOME_FAILED: RunOutcome
CHANGE_KIND_UNSPECIFIED: ChangeKind
CHANGE_KIND_SET: ChangeKind
CHANGE_KIND_TRIGGER: ChangeKind
CHANGE_KIND_ADOPT: ChangeKind
CHANGE_KIND_PROPOSAL: ChangeKind
CHANGE_KIND_REFUSED: ChangeKind
CHANGE_KIND_POLICY_ERROR: ChangeKind
CHANGE_KIND_RELEASE: ChangeKind

class ParamValue(_message.Message):
    __slots__ = ("float_value", "int_value", "bool_value", "string_value")
    FLOAT_VALUE_FIELD_NUMBER: _ClassVar[int]
    INT_VALUE_FIELD_NUMBER: _ClassVar[int]
    BOOL_VALUE_FIELD_NUMBER: _ClassVar[int]
    STRING_VALUE_FIELD_NUMBER: _ClassVar[int]
    float_value: float
    int_value: int
    bool_value: bool
    string_value: str
    def __init__(self, float_value: _Optional[float] = ..., int_value: _Optional[int] = ..., bool_value: _Optional[bool] = ..., string_value: _Optional[str] = ...) -> None: ...

class ParamSpec(_message.Message):
    __slots__ = ("name", "type", "default_value", "min", "max", "log", "choices")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_VALUE_FIELD_NUMBER: _ClassVar[int]
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    LOG_FIELD_NUMBER: _ClassVar[int]
    CHOICES_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: ParamType
    default_value: ParamValue
    min: float
    max: float
    log: bool
    choices: _containers.RepeatedCompositeFieldContainer[ParamValue]
    def __init__(self, name: _Optional[str] = ..., type: _Optional[_Union[ParamType, str]] = ..., default_value: _Optional[_Union[ParamValue, _Mapping]] = ..., min: _Optional[float] = ..., max: _Optional[float] = ..., log: _Optional[bool] = ..., choices: _Optional[_Iterable[_Union[ParamValue, _Mapping]]] = ...) -> None: ...

class ConnectRequest(_message.Message):
    __slots__ = ("hello", "metrics", "applied", "goodbye")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    GOODBYE_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    metrics: MetricBatch
    applied: Applied
    goodbye: Goodbye
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., metrics: _Optional[_Union[MetricBatch, _Mapping]] = ..., applied: _Optional[_Union[Applied, _Mapping]] = ..., goodbye: _Optional[_Union[Goodbye, _Mapping]] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("run", "rank", "world_size", "session_id", "params", "values", "version", "sdk_version", "hostname", "pid", "lazy_acks", "follows_redirects")
    class ValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: ParamValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[ParamValue, _Mapping]] = ...) -> None: ...
    RUN_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    WORLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SDK_VERSION_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    LAZY_ACKS_FIELD_NUMBER: _ClassVar[int]
    FOLLOWS_REDIRECTS_FIELD_NUMBER: _ClassVar[int]
    run: str
    rank: int
    world_size: int
    session_id: str
    params: _containers.RepeatedCompositeFieldContainer[ParamSpec]
    values: _containers.MessageMap[str, ParamValue]
    version: int
    sdk_version: str
    hostname: str
    pid: int
    lazy_acks: bool
    follows_redirects: bool
    def __init__(self, run: _Optional[str] = ..., rank: _Optional[int] = ..., world_size: _Optional[int] = ..., session_id: _Optional[str] = ..., params: _Optional[_Iterable[_Union[ParamSpec, _Mapping]]] = ..., values: _Optional[_Mapping[str, ParamValue]] = ..., version: _Optional[int] = ..., sdk_version: _Optional[str] = ..., hostname: _Optional[str] = ..., pid: _Optional[int] = ..., lazy_acks: _Optional[bool] = ..., follows_redirects: _Optional[bool] = ...) -> None: ...

class MetricPoint(_message.Message):
    __slots__ = ("seq", "step", "time", "values")
    class ValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    SEQ_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    seq: int
    step: int
    time: float
    values: _containers.ScalarMap[str, float]
    def __init__(self, seq: _Optional[int] = ..., step: _Optional[int] = ..., time: _Optional[float] = ..., values: _Optional[_Mapping[str, float]] = ...) -> None: ...

class MetricBatch(_message.Message):
    __slots__ = ("points", "dropped_total", "first_seq", "steps", "times", "value_counts", "names", "name_indexes", "values", "ack_now", "applied")
    POINTS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEQ_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    TIMES_FIELD_NUMBER: _ClassVar[int]
    VALUE_COUNTS_FIELD_NUMBER: _ClassVar[int]
    NAMES_FIELD_NUMBER: _ClassVar[int]
    NAME_INDEXES_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    ACK_NOW_FIELD_NUMBER: _ClassVar[int]
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    points: _containers.RepeatedCompositeFieldContainer[MetricPoint]
    dropped_total: int
    first_seq: int
    steps: _containers.RepeatedScalarFieldContainer[int]
    times: _containers.RepeatedScalarFieldContainer[float]
    value_counts: _containers.RepeatedScalarFieldContainer[int]
    names: _containers.RepeatedScalarFieldContainer[str]
    name_indexes: _containers.RepeatedScalarFieldContainer[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    ack_now: bool
    applied: Applied
    def __init__(self, points: _Optional[_Iterable[_Union[MetricPoint, _Mapping]]] = ..., dropped_total: _Optional[int] = ..., first_seq: _Optional[int] = ..., steps: _Optional[_Iterable[int]] = ..., times: _Optional[_Iterable[float]] = ..., value_counts: _Optional[_Iterable[int]] = ..., names: _Optional[_Iterable[str]] = ..., name_indexes: _Optional[_Iterable[int]] = ..., values: _Optional[_Iterable[float]] = ..., ack_now: _Optional[bool] = ..., applied: _Optional[_Union[Applied, _Mapping]] = ...) -> None: ...

class Applied(_message.Message):
    __slots__ = ("version", "step", "time")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    version: int
    step: int
    time: float
    def __init__(self, version: _Optional[int] = ..., step: _Optional[int] = ..., time: _Optional[float] = ...) -> None: ...

class Goodbye(_message.Message):
    __slots__ = ("outcome",)
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    outcome: RunOutcome
    def __init__(self, outcome: _Optional[_Union[RunOutcome, str]] = ...) -> None: ...

class ConnectResponse(_message.Message):
    __slots__ = ("welcome", "delta", "metrics_ack", "pacing", "redirect")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    METRICS_ACK_FIELD_NUMBER: _ClassVar[int]
    PACING_FIELD_NUMBER: _ClassVar[int]
    REDIRECT_FIELD_NUMBER: _ClassVar[int]
    welcome: Welcome
    delta: Delta
    metrics_ack: MetricsAck
    pacing: Pacing
    redirect: Redirect
    def __init__(self, welcome: _Optional[_Union[Welcome, _Mapping]] = ..., delta: _Optional[_Union[Delta, _Mapping]] = ..., metrics_ack: _Optional[_Union[MetricsAck, _Mapping]] = ..., pacing: _Optional[_Union[Pacing, _Mapping]] = ..., redirect: _Optional[_Union[Redirect, _Mapping]] = ...) -> None: ...

class Redirect(_message.Message):
    __slots__ = ("port", "host")
    PORT_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    port: int
    host: str
    def __init__(self, port: _Optional[int] = ..., host: _Optional[str] = ...) -> None: ...

class Pacing(_message.Message):
    __slots__ = ("min_flush_interval_seconds",)
    MIN_FLUSH_INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    min_flush_interval_seconds: float
    def __init__(self, min_flush_interval_seconds: _Optional[float] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("version", "last_seq", "adopted")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    ADOPTED_FIELD_NUMBER: _ClassVar[int]
    version: int
    last_seq: int
    adopted: bool
    def __init__(self, version: _Optional[int] = ..., last_seq: _Optional[int] = ..., adopted: _Optional[bool] = ...) -> None: ...

class Delta(_message.Message):
    __slots__ = ("version", "changes", "trigger", "source", "reason", "apply_at_step", "time", "ack_with_metrics")
    class ChangesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: ParamValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[ParamValue, _Mapping]] = ...) -> None: ...
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    APPLY_AT_STEP_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    ACK_WITH_METRICS_FIELD_NUMBER: _ClassVar[int]
    version: int
    changes: _containers.MessageMap[str, ParamValue]
    trigger: str
    source: str
    reason: str
    apply_at_step: int
    time: float
    ack_with_metrics: bool
    def __init__(self, version: _Optional[int] = ..., changes: _Optional[_Mapping[str, ParamValue]] = ..., trigger: _Optional[str] = ..., source: _Optional[str] = ..., reason: _Optional[str] = ..., apply_at_step: _Optional[int] = ..., time: _Optional[float] = ..., ack_with_metrics: _Optional[bool] = ...) -> None: ...

class MetricsAck(_message.Message):
    __slots__ = ("seq",)
    SEQ_FIELD_NUMBER: _ClassVar[int]
    seq: int
    def __init__(self, seq: _Optional[int] = ...) -> None: ...

class ListRunsRequest(_message.Message):
    __slots__ = ("run_glob",)
    RUN_GLOB_FIELD_NUMBER: _ClassVar[int]
    run_glob: str
    def __init__(self, run_glob: _Optional[str] = ...) -> None: ...

class ListRunsResponse(_message.Message):
    __slots__ = ("runs",)
    RUNS_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[RunInfo]
    def __init__(self, runs: _Optional[_Iterable[_Union[RunInfo, _Mapping]]] = ...) -> None: ...

class RunInfo(_message.Message):
    __slots__ = ("run", "connected", "connected_ranks", "world_size", "last_step", "latest_metrics", "values", "params", "version", "acked_version", "pinned", "last_seen", "points_received", "points_dropped", "outcome", "step_rate")
    class LatestMetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class ValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: ParamValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[ParamValue, _Mapping]] = ...) -> None: ...
    RUN_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_RANKS_FIELD_NUMBER: _ClassVar[int]
    WORLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    LAST_STEP_FIELD_NUMBER: _ClassVar[int]
    LATEST_METRICS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ACKED_VERSION_FIELD_NUMBER: _ClassVar[int]
    PINNED_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    POINTS_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    POINTS_DROPPED_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    STEP_RATE_FIELD_NUMBER: _ClassVar[int]
    run: str
    connected: bool
    connected_ranks: int
    world_size: int
    last_step: int
    latest_metrics: _containers.ScalarMap[str, float]
    values: _containers.MessageMap[str, ParamValue]
    params: _containers.RepeatedCompositeFieldContainer[ParamSpec]
    version: int
    acked_version: int
    pinned: _containers.RepeatedScalarFieldContainer[str]
    last_seen: float
    points_received: int
    points_dropped: int
    outcome: RunOutcome
    step_rate: float
    def __init__(self, run: _Optional[str] = ..., connected: _Optional[bool] = ..., connected_ranks: _Optional[int] = ..., world_size: _Optional[int] = ..., last_step: _Optional[int] = ..., latest_metrics: _Optional[_Mapping[str, float]] = ..., values: _Optional[_Mapping[str, ParamValue]] = ..., params: _Optional[_Iterable[_Union[ParamSpec, _Mapping]]] = ..., version: _Optional[int] = ..., acked_version: _Optional[int] = ..., pinned: _Optional[_Iterable[str]] = ..., last_seen: _Optional[float] = ..., points_received: _Optional[int] = ..., points_dropped: _Optional[int] = ..., outcome: _Optional[_Union[RunOutcome, str]] = ..., step_rate: _Optional[float] = ...) -> None: ...

class SetParamsRequest(_message.Message):
    __slots__ = ("run", "changes", "reason", "apply_at_step", "wait", "timeout_seconds")
    class ChangesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: ParamValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[ParamValue, _Mapping]] = ...) -> None: ...
    RUN_FIELD_NUMBER: _ClassVar[int]
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    APPLY_AT_STEP_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    run: str
    changes: _containers.MessageMap[str, ParamValue]
    reason: str
    apply_at_step: int
    wait: bool
    timeout_seconds: float
    def __init__(self, run: _Optional[str] = ..., changes: _Optional[_Mapping[str, ParamValue]] = ..., reason: _Optional[str] = ..., apply_at_step: _Optional[int] = ..., wait: _Optional[bool] = ..., timeout_seconds: _Optional[float] = ...) -> None: ...

class SetParamsResponse(_message.Message):
    __slots__ = ("version", "old_values", "acknowledged")
    class OldValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: ParamValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[ParamValue, _Mapping]] = ...) -> None: ...
    VERSION_FIELD_NUMBER: _ClassVar[int]
    OLD_VALUES_FIELD_NUMBER: _ClassVar[int]
    ACKNOWLEDGED_FIELD_NUMBER: _ClassVar[int]
    version: int
    old_values: _containers.MessageMap[str, ParamValue]
    acknowledged: bool
    def __init__(self, version: _Optional[int] = ..., old_values: _Optional[_Mapping[str, ParamValue]] = ..., acknowledged: _Optional[bool] = ...) -> None: ...

class FireTriggerRequest(_message.Message):
    __slots__ = ("run", "name", "reason")
    RUN_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    run: str
    name: str
    reason: str
    def __init__(self, run: _Optional[str] = ..., name: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class FireTriggerResponse(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: int
    def __init__(self, version: _Optional[int] = ...) -> None: ...

class ReleaseParamsRequest(_message.Message):
    __slots__ = ("run", "names")
    RUN_FIELD_NUMBER: _ClassVar[int]
    NAMES_FIELD_NUMBER: _ClassVar[int]
    run: str
    names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, run: _Optional[str] = ..., names: _Optional[_Iterable[str]] = ...) -> None: ...

class ReleaseParamsResponse(_message.Message):
    __slots__ = ("released",)
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    released: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, released: _Optional[_Iterable[str]] = ...) -> None: ...

class ParamChange(_message.Message):
    __slots__ = ("name", "old_value", "new_value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    OLD_VALUE_FIELD_NUMBER: _ClassVar[int]
    NEW_VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    old_value: ParamValue
    new_value: ParamValue
    def __init__(self, name: _Optional[str] = ..., old_value: _Optional[_Union[ParamValue, _Mapping]] = ..., new_value: _Optional[_Union[ParamValue, _Mapping]] = ...) -> None: ...

class RankAck(_message.Message):
    __slots__ = ("rank", "step", "time")
    RANK_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    rank: int
    step: int
    time: float
    def __init__(self, rank: _Optional[int] = ..., step: _Optional[int] = ..., time: _Optional[float] = ...) -> None: ...

class HistoryEntry(_message.Message):
    __slots__ = ("version", "time", "kind", "source", "reason", "changes", "trigger", "apply_at_step", "acks", "step")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_FIELD_NUMBER: _ClassVar[int]
    APPLY_AT_STEP_FIELD_NUMBER: _ClassVar[int]
    ACKS_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    version: int
    time: float
    kind: ChangeKind
    source: str
    reason: str
    changes: _containers.RepeatedCompositeFieldContainer[ParamChange]
    trigger: str
    apply_at_step: int
    acks: _containers.RepeatedCompositeFieldContainer[RankAck]
    step: int
    def __init__(self, version: _Optional[int] = ..., time: _Optional[float] = ..., kind: _Optional[_Union[ChangeKind, str]] = ..., source: _Optional[str] = ..., reason: _Optional[str] = ..., changes: _Optional[_Iterable[_Union[ParamChange, _Mapping]]] = ..., trigger: _Optional[str] = ..., apply_at_step: _Optional[int] = ..., acks: _Optional[_Iterable[_Union[RankAck, _Mapping]]] = ..., step: _Optional[int] = ...) -> None: ...

class GetHistoryRequest(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: str
    def __init__(self, run: _Optional[str] = ...) -> None: ...

class GetHistoryResponse(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[HistoryEntry]
    def __init__(self, entries: _Optional[_Iterable[_Union[HistoryEntry, _Mapping]]] = ...) -> None: ...

class GetMetricsRequest(_message.Message):
    __slots__ = ("run", "name", "page_token", "page_size")
    RUN_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    run: str
    name: str
    page_token: str
    page_size: int
    def __init__(self, run: _Optional[str] = ..., name: _Optional[str] = ..., page_token: _Optional[str] = ..., page_size: _Optional[int] = ...) -> None: ...

class StoredMetric(_message.Message):
    __slots__ = ("rank", "seq", "step", "time", "name", "value")
    RANK_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    rank: int
    seq: int
    step: int
    time: float
    name: str
    value: float
    def __init__(self, rank: _Optional[int] = ..., seq: _Optional[int] = ..., step: _Optional[int] = ..., time: _Optional[float] = ..., name: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...

class GetMetricsResponse(_message.Message):
    __slots__ = ("points", "next_page_token")
    POINTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    points: _containers.RepeatedCompositeFieldContainer[StoredMetric]
    next_page_token: str
    def __init__(self, points: _Optional[_Iterable[_Union[StoredMetric, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...
