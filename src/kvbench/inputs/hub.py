"""A Hub id's config, or one line saying why not, without the Hub client's retries.

huggingface_hub retries a request that meets a network error (5 retries, backing off up to 8 s, a 60 s timeout
each): an unreachable Hub or a mistyped id behind a firewall printed ten lines over half a minute before its
error. kvbench first asks for the id's config.json once (one HEAD request, no retries, the Hub client's own
`HF_HUB_ETAG_TIMEOUT`, 10 s by default). Where the Hub answers, the config loads as transformers loads it; where it
cannot be reached (offline, `HF_HUB_OFFLINE`, DNS, a timeout), a copy in the local Hub cache is used; with neither,
one line says so.
"""

from __future__ import annotations

from ..errors import UserError
from .names import OFFLINE_HINT


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def probe_config(spec: str) -> BaseException | None:
    """Ask the Hub once for `spec`'s config.json: None when it is there; the error when the Hub cannot be reached
    (or answers with a server error); a UserError raised when it answers that the id, or its config, is not
    there (unknown, private, gated).

    One plain HEAD request through the Hub client's own session (its headers, token and proxies): the client's
    `get_hf_file_metadata` retries network errors itself in huggingface_hub 0.x, and from 1.x unless told not to."""
    from huggingface_hub import constants, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

    if constants.HF_HUB_OFFLINE:
        return ConnectionError("offline mode is enabled (HF_HUB_OFFLINE)")
    try:
        response = get_session().head(hf_hub_url(spec, "config.json"), headers=build_hf_headers(),
                                      timeout=constants.HF_HUB_ETAG_TIMEOUT)
        hf_raise_for_status(response)
    except HfHubHTTPError as exc:  # the Hub answered
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status is not None and status >= 500:
            return exc
        raise UserError(f"cannot load {spec!r} from the Hugging Face Hub: {first_line(exc)}") from None
    except Exception as exc:  # DNS, refused, timed out: try the local cache
        return exc
    return None


def hub_config(spec: str, trust_remote_code: bool, hint: str = ""):
    """The transformers config of Hub id `spec`, or a UserError (one line) when neither the Hub nor the local cache
    has it. `hint` ends that line (a bundled preset of the same model, say)."""
    from transformers import AutoConfig

    unreachable = probe_config(spec)
    try:
        if unreachable is None:
            return AutoConfig.from_pretrained(spec, trust_remote_code=trust_remote_code)
        return AutoConfig.from_pretrained(spec, trust_remote_code=trust_remote_code, local_files_only=True)
    except Exception as exc:  # gated, custom code, a config transformers refuses: one line for the user
        if unreachable is not None:
            raise UserError(f"cannot load {spec!r}: the Hugging Face Hub cannot be reached "
                            f"({first_line(unreachable)}) and the local Hub cache has no copy"
                            f"{hint or '; ' + OFFLINE_HINT}") from None
        raise UserError(f"cannot load {spec!r} from the Hugging Face Hub: {first_line(exc)}{hint}") from None
