"""The libLogHelper v2 line grammar, as constants and formatters shared by writer and parser.

Exact forms (libLogHelper ``log_helper.cpp``; the reference runner's diehardnet detail lines):

    #HEADER <free text>
    #BEGIN Y:%Y M:%m D:%d Time:%H:%M:%S
    #IT <n> KerTime:<%.7f> AccTime:<%.7f>                   (old: #IT Ite:<n> KerTime:.. AccTime:..)
    #ERR <detail>                                            (before the #SDC of its iteration)
    #SDC Ite:<n> KerTime:<%.7f> AccTime:<%.7f> KerErr:<k> AccErr:<total>
    #INF <detail>   |   #INF Ite:<n> KerTime:.. AccTime:.. KerInf:<k>
    #ABORT too many errors per iteration | #ABORT amount of errors equals of the last iteration
    #END

Server copies (radiation-setup) add ``#SERVER_HEADER``, ``#SERVER_BEGIN`` and one closing
``#SERVER_END`` / ``#SERVER_DUE:<reason>`` / ``#SERVER_UNKNOWN``, each followed by ``TIME:%Y-%m-%d-%H-%M-%S``.
Any line may carry an ISO timestamp prefix ``YYYY-MM-DD HH:MM:SS.mmm ``.

Our additions are ``#INF`` lines only, so every existing parser keeps working:

    #INF diehardlab version:<v> clock:UTC            after #BEGIN: the times in this log are UTC
    #INF DUE cause:<cause> action:<action>           server copy, before #SERVER_DUE: why the DUT was lost
    #INF STOP reason:<text>                          the runner was asked to stop (SIGTERM) before #END
"""

from __future__ import annotations

from datetime import datetime

ABORT_TOO_MANY = "too many errors per iteration"
ABORT_EQUAL = "amount of errors equals of the last iteration"

# radiation-setup's closing markers of a server copy, by the action the server took.
SERVER_END = "#SERVER_END"
SERVER_DUE_APP = "#SERVER_DUE:soft APP reboot"
SERVER_DUE_OS = "#SERVER_DUE:soft OS reboot"
SERVER_DUE_POWER = "#SERVER_DUE:power cycle"
SERVER_UNKNOWN = "#SERVER_UNKNOWN"

# What made the server act (our #INF DUE line); the marker above says what it did.
DUE_CAUSES = ("app-crash", "app-hang", "os-hang", "soft-app-reboot", "soft-os-reboot", "power-cycle")


def fmt_time(seconds: float) -> str:
    """libLogHelper prints times with ``std::fixed`` and precision 7."""
    return f"{seconds:.7f}"


def begin_line(when: datetime) -> str:
    return when.strftime("#BEGIN Y:%Y M:%m D:%d Time:%H:%M:%S") + "\n"


def it_line(iteration: int, kernel_time: float, acc_time: float) -> str:
    return f"#IT {iteration} KerTime:{fmt_time(kernel_time)} AccTime:{fmt_time(acc_time)}\n"


def sdc_line(iteration: int, kernel_time: float, acc_time: float, kernel_errors: int, acc_errors: int) -> str:
    return (
        f"#SDC Ite:{iteration} KerTime:{fmt_time(kernel_time)} AccTime:{fmt_time(acc_time)} "
        f"KerErr:{kernel_errors} AccErr:{acc_errors}\n"
    )


def inf_count_line(iteration: int, kernel_time: float, acc_time: float, count: int) -> str:
    return f"#INF Ite:{iteration} KerTime:{fmt_time(kernel_time)} AccTime:{fmt_time(acc_time)} KerInf:{count}\n"


def critical_detail(batch: int, img: int, i: int, golden: int, output: int, ground_truth: int) -> str:
    """diehardnet: top-k position ``i`` of image ``img`` changed (a critical SDC)."""
    return f"batch:{batch} critical-img:{img} i:{i} g:{golden} o:{output} gt:{ground_truth}"


def element_detail(batch: int, img: int, i: int, golden: float, output: float) -> str:
    """diehardnet: output element ``i`` of image ``img`` differs from the golden value."""
    return f"batch:{batch} img:{img} i:{i} g:{golden:.6e} o:{output:.6e}"


def server_time(when: datetime) -> str:
    return when.strftime("TIME:%Y-%m-%d-%H-%M-%S")


def server_begin_line(when: datetime) -> str:
    """radiation-setup writes the fields unpadded, with microseconds after a dash."""
    return (
        f"#SERVER_BEGIN Y:{when.year} M:{when.month} D:{when.day} "
        f"TIME:{when.hour}:{when.minute}:{when.second}-{when.microsecond}\n"
    )


def iso_prefix(when: datetime) -> str:
    """The 2026 server timestamp prefix ``YYYY-MM-DD HH:MM:SS.mmm `` (milliseconds)."""
    return when.strftime("%Y-%m-%d %H:%M:%S.") + f"{when.microsecond // 1000:03d} "
