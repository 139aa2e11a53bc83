from twisted.application.service import ServiceMaker

sysadm_dispatch = ServiceMaker(
    "sysadm-dispatch",
    "sysadm_dispatch.tap",
    "Run programs on demand for remote clients: the SysAdm dispatcher over REST and WebSocket.",
    "sysadm-dispatch",
)
