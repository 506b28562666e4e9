"""Every bound on outside input, in one place.

Text from users, files, MCP clients and the web is hostile until checked: each limit here
bounds the size of that text or the work it can cause before any expensive or native call
(pymatgen's CIF symmetry expansion, neighbour lists, spglib, the models). The readers and
the MCP schemas import these names; change a limit here and every entry point follows.
Lengths are in Å, volumes in Å^3, times in seconds, memory in bytes.
"""

from __future__ import annotations

# --- text -----------------------------------------------------------------------------------------
MAX_REQUEST_CHARS = 2000  # a plain-language request (search, propose, chat tools, MCP)
MAX_QUERY_CHARS = 2000  # a knowledge or memory query
MAX_CHAT_MESSAGE_CHARS = 4000  # one message typed into the chat
MAX_FORMULA_LENGTH = 100  # characters of one formula
MAX_FORMULA_ATOMS = 1000  # atoms in one formula as written
MAX_FORMULA_ELEMENTS = 10
MIN_FORMULA_COUNT = 0.001  # smallest amount of an element (``H0.0001`` is refused, not rounded to zero)
MAX_FORMULAS = 500  # formulas in one batch
MAX_EXCLUDED_FORMULAS = 10_000
MAX_LOOKUP_CHARS = 200  # one property look-up: a formula, optionally with a polymorph name ('alpha quartz SiO2')
MAX_LOOKUP_ROWS = 100  # polymorphs one look-up returns, and structures it may parse for their space groups

# --- structure files --------------------------------------------------------------------------------
MAX_STRUCTURE_BYTES = 2_000_000  # one CIF or POSCAR file
MAX_CIF_CHARS = 1_000_000  # one CIF text sent by an MCP client
MAX_STRUCTURES = 50  # structures in one MCP or chat call
MAX_SITES = 1000  # sites of a readable structure
# Positions a CIF's symmetry expansion may create (symmetry operations x asymmetric-unit sites),
# counted before pymatgen expands them. The expansion is quadratic in them: 2,400 take 0.8 s,
# 9,600 take 9 s on one core; 10,000 admits a 1,000-site cell of 52 sites x 192 operations.
MAX_SYMMETRY_EXPANSION = 10_000
MAX_SYMMETRY_OPERATIONS = 192  # the most a space group has
MAX_LATTICE_LENGTH = 1000.0  # Å; MP's longest axis is ~ 100 Å
MIN_LATTICE_HEIGHT = 0.1  # Å between lattice planes; below it the cell is degenerate
# Volume per atom a readable structure may have (Å^3); the structural-validity window
# (3-200 Å^3) is narrower and gives a verdict, this one refuses the input.
READABLE_VOLUME_PER_ATOM = (0.01, 100_000.0)
MAX_NEIGHBOUR_PAIRS = 2_000_000  # pairs one shortest-distance search may list (bounds its memory)

# --- isolation of native work -------------------------------------------------------------------------
SANDBOX_TIMEOUT = 20.0  # s one structure's parsing and checking may take in the worker process
SANDBOX_MEMORY = 2 * 1024**3  # bytes of address space the worker may add to what its imports take

# --- run records ($GENMS_HOME/runs) ------------------------------------------------------------------
MAX_RUN_SUMMARY_BYTES = 1_000_000  # one run.json (a summary is ~ 1 kB)
MAX_RUN_RESULTS_BYTES = 50_000_000  # one results.json (a 100-candidate search writes ~ 1 MB)
MAX_RUN_FILE_BYTES = 50_000_000  # any other file of a run served or read back (report.md, a CIF)

# --- the MCP server's HTTP transport (agent/mcp_server.py) --------------------------------------------
MAX_HTTP_BODY_BYTES = 16 * 1024 * 1024  # one HTTP request; above the per-CIF cap, so an oversized CIF gets a tool error, not 413
MAX_MCP_SESSIONS = 100  # open MCP sessions at once (the SDK's default is 10,000); more get HTTP 503
MAX_HTTP_CONNECTIONS = 256  # concurrent HTTP connections and requests (uvicorn); more get HTTP 503
MIN_TOKEN_LENGTH = 16  # characters of a bearer token
MAX_TOKEN_LENGTH = 4096
MAX_TOKEN_FILE_BYTES = 65_536  # a --token-file is read up to this size; a larger one is refused
MAX_ALLOWED_HOSTS = 64  # --allowed-host / --allowed-origin entries
MAX_ERROR_CHARS = 1000  # characters of an error message sent to an MCP client (the log keeps the whole)

# --- text sent to an LLM (tools/fencing.py) -------------------------------------------------------------
MAX_TOOL_RESULT_CHARS = 40_000  # one tool result sent back to the chat model (about 10k tokens); longer ones are cut
MAX_PASSAGE_CHARS = 4000  # one retrieved passage in a prompt (store chunks are ~900)
MAX_PROMPT_PASSAGES = 50  # retrieved passages in one prompt
MAX_ATTRIBUTE_CHARS = 300  # a title or source shown in a data block's tag

# --- Wikipedia cache (tools/knowledge.py) -----------------------------------------------------------------
WIKIPEDIA_MAX_AGE_DAYS = 30.0  # default of GENMS_WIKIPEDIA_MAX_AGE_DAYS: older cached articles are refetched when online
MAX_RUN_FILES = 10_000  # files listed in one run folder (a search writes at most a few hundred)
