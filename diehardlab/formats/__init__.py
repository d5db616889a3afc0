"""Pure formats shared by every component: the libLogHelper log grammar and the UDP datagram codec.

Standard library only, so the DUT (no pandas), the server (no torch) and the analysis all import the
same code; nothing here is re-implemented elsewhere.
"""

from diehardlab.formats.datagram import Datagram, DatagramError, DatagramSender, DatagramVerifier, decode
from diehardlab.formats.filename import LogName, format_log_name, parse_log_name
from diehardlab.formats.parser import LogParser, LogSummary, parse_file, summarize
from diehardlab.formats.writer import BenchmarkAborted, LogWriter

__all__ = [
    "BenchmarkAborted",
    "Datagram",
    "DatagramError",
    "DatagramSender",
    "DatagramVerifier",
    "LogName",
    "LogParser",
    "LogSummary",
    "LogWriter",
    "decode",
    "format_log_name",
    "parse_file",
    "parse_log_name",
    "summarize",
]
