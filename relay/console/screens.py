"""The console's screens and actions, each a call into ``relay.service`` as the user.

Each screen renders its empty, error and success states; an action renders
the screen it belongs to again with the outcome (``Notice``): the service's
own words on a refusal (422/409 with the form as it was), a 404 page for
what the user may not see (never "forbidden": another tenant's things do not
exist for it). What a user sees is the scope of its account, as for its API
token.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlencode

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from relay.accounting.report import render_csv
from relay.console.web import (
    SESSION_COOKIE,
    SIGN_IN_CSRF_COOKIE,
    Notice,
    call,
    context,
    failed,
    guarded,
    identity,
    may_post,
    new_csrf,
    ok,
    render,
    set_cookie,
    signed_in,
    status_of,
)
from relay.core.errors import Invalid, NotFound, RelayError
from relay.providers.registry import KINDS
from relay.service import (
    accounts,
    audit,
    confirmations,
    console_users,
    dashboard,
    dnsverify,
    limits,
    notifications,
    provider_checks,
    providers,
    scope,
    suppressions,
    usage,
)
from relay.service import queue as queue_service
from relay.service.console_users import Identity

R = TypeVar("R")

# -- sign-in ------------------------------------------------------------------------


async def sign_in_page(request: Request) -> Response:
    if await identity(request) is not None:
        return RedirectResponse("/", status_code=303)
    return _sign_in_form(request, 200, None)


def _sign_in_form(request: Request, status: int, notice: Notice | None) -> Response:
    # One token per browser while it signs in: pages loaded in between (another
    # tab, the favicon's redirect) must not make the open form's token stale.
    token = request.cookies.get(SIGN_IN_CSRF_COOKIE) or new_csrf()
    if len(token) > 100:
        token = new_csrf()
    response = render(
        request,
        "sign_in.html",
        None,
        status,
        notice,
        csrf=token,
        next=_safe_next(request.query_params.get("next", "/")),
    )
    set_cookie(request, response, SIGN_IN_CSRF_COOKIE, token, 3600)
    return response


def _safe_next(target: str) -> str:
    """Only a path of this site (never ``//host`` or a scheme): no open redirect."""
    if target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/"


async def sign_in(request: Request) -> Response:
    ctx = context(request)
    form = await request.form()
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    expected = request.cookies.get(SIGN_IN_CSRF_COOKIE, "")
    if not expected or fields.get("csrf") != expected:
        notice = Notice("error", "The form's security token is missing or stale; try again.")
        return _sign_in_form(request, 403, notice)
    email, password = fields.get("email", "").strip().lower(), fields.get("password", "")
    address = request.client.host if request.client else "unknown"
    pair = f"{email}|{address}"
    if ctx.by_address.locked(address) or ctx.by_user.locked(pair):
        minutes = max(1, math.ceil(ctx.settings.auth.lockout / 60))
        text = f"Too many failed sign-ins; try again in {minutes} minute(s)."
        response = _sign_in_form(request, 429, Notice("error", text))
        response.headers["Retry-After"] = str(math.ceil(ctx.settings.auth.lockout))
        return response
    lifetime = ctx.settings.admin.session_lifetime
    signed = await anyio.to_thread.run_sync(
        console_users.sign_in, ctx.engine, ctx.hasher, email, password, lifetime
    )
    if signed is None:
        ctx.by_address.fail(address)
        ctx.by_user.fail(pair)
        return _sign_in_form(request, 401, Notice("error", "Wrong email or password."))
    ctx.by_user.succeed(pair)
    response = RedirectResponse(_safe_next(fields.get("next", "/")), status_code=303)
    # A browser-session cookie: the server's expiry, renewed as it is used, decides.
    set_cookie(request, response, SESSION_COOKIE, signed.cookie)
    response.delete_cookie(SIGN_IN_CSRF_COOKIE, path="/")
    return response


async def sign_out(request: Request) -> Response:
    ctx = context(request)
    who = await signed_in(request)
    form = await request.form()
    if form.get("csrf") == who.csrf_token:
        cookie = request.cookies.get(SESSION_COOKIE, "")
        await anyio.to_thread.run_sync(console_users.sign_out, ctx.engine, cookie)
    response = RedirectResponse("/sign-in", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


# -- shared reads ---------------------------------------------------------------------


async def _accounts(request: Request, who: Identity) -> list[str]:
    engine = context(request).engine

    def read() -> list[str]:
        # An operator sees every tree, where two agencies may each have a "shop":
        # sub-accounts are written AGENCY:NAME, the one spelling that names one.
        qualify = who.actor.scope.everything
        return [
            f"{parent}{scope.QUALIFIER}{a.name}" if qualify and parent else a.name
            for a, parent in accounts.list_accounts(engine)
            if who.actor.scope.sees(a.id)
        ]

    return await anyio.to_thread.run_sync(read)


def _own(who: Identity, names: list[str]) -> str:
    """The account a form starts on: the user's own, else the first it sees."""
    return who.account or (names[0] if names else "")


# -- dashboard ------------------------------------------------------------------------


@dataclass(frozen=True)
class Period:
    label: str
    classes: dict[str, int]
    recipients: int
    cost: str


def _period(report: Any, label: str) -> Period:
    classes: dict[str, int] = {}
    total, cost = 0, 0
    for line in report.lines:
        if line.type == "AGENCY_TOTAL":
            continue
        for name, counts in line.classes.items():
            classes[name] = classes.get(name, 0) + counts.recipients
            total += counts.recipients
        cost += report.cost(line)
    return Period(label, classes, total, f"{cost:.2f}")


async def home(request: Request) -> Response:
    who = await signed_in(request)
    ctx = context(request)
    today = dt.datetime.now(dt.UTC).date()
    names = await _accounts(request, who)
    account = who.account if not who.actor.scope.everything else None
    day = await call(who, usage.usage_report, ctx.engine, ctx.price_per_1000, account, today, today)
    month = await call(
        who,
        usage.usage_report,
        ctx.engine,
        ctx.price_per_1000,
        account,
        today.replace(day=1),
        today,
    )
    counts = await call(who, dashboard.queue_counts, ctx.engine, who.actor.scope)
    standing = await call(who, dashboard.standings, ctx.engine, who.actor.scope)
    return render(
        request,
        "dashboard.html",
        who,
        periods=[_period(day, "Today"), _period(month, "This month")],
        counts=counts,
        standings=standing,
        accounts=names,
    )


# -- domains and senders ----------------------------------------------------------------


async def _domains_page(
    request: Request, who: Identity, status: int = 200, notice: Notice | None = None, **extra: Any
) -> Response:
    ctx = context(request)
    names = await _accounts(request, who)

    def read() -> list[tuple[str, Any, Any, tuple[str, str] | None]]:
        rows = []
        for name in names:
            domains = scope.list_domains(ctx.engine, who.actor.scope, name)
            senders = accounts.list_senders(ctx.engine, name)
            for d in domains:
                proof = next((s for s in senders if s.pattern == d.name), None)
                rows.append((name, d, proof, _record(proof)))
        return rows

    def read_senders() -> list[tuple[str, Any]]:
        found = []
        for name in names:
            found += [(name, s) for s in accounts.list_senders(ctx.engine, name)]
        return found

    rows = await call(who, read)
    senders = await call(who, read_senders)
    return render(
        request,
        "domains.html",
        who,
        status,
        notice,
        rows=rows,
        senders=senders,
        accounts=names,
        own=_own(who, names),
        form=extra.pop("form", {}),
        **extra,
    )


def _record(proof: Any) -> tuple[str, str] | None:
    """The TXT record a domain awaits (name, value), once its token exists."""
    if proof is None or proof.verified or not proof.dns_token:
        return None
    return dnsverify.record_name(proof.pattern), dnsverify.record_value(proof.dns_token)


async def domains(request: Request) -> Response:
    return await _domains_page(request, await signed_in(request))


async def domain_add(request: Request) -> Response:
    who, form = await may_post(request)
    ctx = context(request)
    try:
        row = await call(
            who, accounts.add_domain, ctx.engine, form.get("domain", ""), form["account"]
        )
    except RelayError as exc:
        return await _domains_page(request, who, status_of(exc), failed(exc), form=form)
    return await _domains_page(
        request, who, 200, ok(f"Added {row.name}. Publish its TXT record, then verify it.")
    )


async def domain_verify(request: Request) -> Response:
    who, form = await may_post(request)
    ctx = context(request)
    domain = request.path_params["domain"]
    try:
        found = await call(
            who,
            accounts.verify_sender_dns,
            ctx.engine,
            domain,
            form.get("account", ""),
            ctx.resolver(),
        )
    except RelayError as exc:
        return await _domains_page(request, who, status_of(exc), failed(exc))
    if found.verified:
        return await _domains_page(request, who, 200, ok(f"{domain} is verified by DNS."))
    text = f"The TXT record for {domain} was not found yet; publish it and try again."
    return await _domains_page(request, who, 422, Notice("error", text), challenge=found)


async def sender_send_code(request: Request) -> Response:
    who, form = await may_post(request)
    ctx = context(request)
    s = ctx.settings
    try:
        sent = await call(
            who,
            confirmations.send_code,
            ctx.engine,
            ctx.box,
            s.policy,
            s.server.hostname,
            form.get("address", ""),
            form.get("account", ""),
        )
    except RelayError as exc:
        return await _domains_page(request, who, status_of(exc), failed(exc), form=form)
    text = f"A code was mailed to {sent.address}; enter it below to confirm the address."
    return await _domains_page(request, who, 200, ok(text), form=form)


async def sender_confirm(request: Request) -> Response:
    who, form = await may_post(request)
    ctx = context(request)
    try:
        row = await call(
            who,
            confirmations.confirm,
            ctx.engine,
            ctx.box,
            form.get("address", ""),
            form.get("account", ""),
            form.get("code", "").strip(),
        )
    except RelayError as exc:
        return await _domains_page(request, who, status_of(exc), failed(exc), form=form)
    return await _domains_page(request, who, 200, ok(f"{row.pattern} is verified."))


# -- SMTP credentials ---------------------------------------------------------------------

# What a mail plugin is told when the configuration names no submission port
# (the usual ones: RFC 6409 submission, RFC 8314 implicit TLS, the common alternative).
USUAL_PORTS = ((587, "STARTTLS"), (465, "SSL/TLS"), (2525, "STARTTLS"))
_TLS_WORDS = {
    "implicit": "SSL/TLS",
    "starttls-required": "STARTTLS",
    "starttls-optional": "STARTTLS",
}


def _smtp_settings(request: Request) -> dict[str, Any]:
    """What a mail plugin needs: the relay's host name, and each submission port with
    its TLS mode as configured (port 25, ``smtp``, is for servers, not plugins)."""
    s = context(request).settings
    ports = [
        (item.port, _TLS_WORDS[item.mode])
        for item in s.listeners
        if item.name != "smtp" and item.port
    ]
    return {"host": s.server.hostname, "ports": sorted(ports) or list(USUAL_PORTS)}


async def _credentials_page(
    request: Request,
    who: Identity,
    status: int = 200,
    notice: Notice | None = None,
    new: Any = None,
) -> Response:
    ctx = context(request)
    domain = request.path_params["domain"]
    await call(who, scope.require, ctx.engine, scope.of_domain(), domain=domain)
    rows = await call(who, accounts.list_credentials, ctx.engine, domain)
    limit = ctx.settings.auth.max_credentials_per_domain
    return render(
        request,
        "credentials.html",
        who,
        status,
        notice,
        domain=domain,
        rows=rows,
        limit=limit,
        full=len(rows) >= limit,
        new=new,
        smtp=_smtp_settings(request),
    )


async def credentials(request: Request) -> Response:
    return await _credentials_page(request, await signed_in(request))


async def credential_create(request: Request) -> Response:
    who, form = await may_post(request)
    ctx = context(request)
    domain = request.path_params["domain"]
    local = form.get("local", "").strip()
    try:
        if not local or "@" in local:
            raise Invalid("the user name is the part before @, e.g. app", "local")
        new = await call(
            who,
            accounts.create_credential,
            ctx.engine,
            ctx.hasher,
            f"{local}@{domain}",
            None,
            form.get("purpose", "transactional"),
            ctx.settings.auth.max_credentials_per_domain,
        )
    except RelayError as exc:
        return await _credentials_page(request, who, status_of(exc), failed(exc))
    return await _credentials_page(
        request, who, 200, ok(f"Created {new.username}. Copy the password now."), new
    )


async def credential_reset(request: Request) -> Response:
    who, _ = await may_post(request)
    ctx = context(request)
    username = request.path_params["username"]
    try:
        new = await call(who, accounts.reset_credential, ctx.engine, ctx.hasher, username, None)
    except RelayError as exc:
        return await _credentials_page(request, who, status_of(exc), failed(exc))
    text = f"New password for {new.username}; the old one no longer works. Copy it now."
    return await _credentials_page(request, who, 200, ok(text), new)


async def credential_delete(request: Request) -> Response:
    who, _ = await may_post(request)
    ctx = context(request)
    username = request.path_params["username"]
    try:
        name = await call(who, accounts.delete_credential, ctx.engine, username)
    except RelayError as exc:
        return await _credentials_page(request, who, status_of(exc), failed(exc))
    return await _credentials_page(request, who, 200, ok(f"Deleted {name}."))


# -- providers -------------------------------------------------------------------------

PROVIDER_OPTIONS = (
    "api_url",
    "smtp_host",
    "smtp_port",
    "smtp_user",
    "smtp_tls",
    "test_address",
    "domain",
    "source_address",
    "ip_pool",
)
INT_OPTIONS = ("smtp_port",)


def _options(form: dict[str, str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for key in PROVIDER_OPTIONS:
        value = form.get(key, "").strip()
        if not value or key == "domain":
            continue
        if key in INT_OPTIONS:
            try:
                options[key] = int(value)
            except ValueError:
                raise Invalid(f"{key} must be a whole number", key) from None
        else:
            options[key] = value
    if "allow_insecure_tls" in form:
        options["allow_insecure_tls"] = form["allow_insecure_tls"] == "on"
    return options


def _secrets(form: dict[str, str]) -> dict[str, str]:
    return {k: form[k] for k in ("api_key", "smtp_password") if form.get(k)}


async def _providers_page(
    request: Request,
    who: Identity,
    status: int = 200,
    notice: Notice | None = None,
    legs: Any = None,
    form: dict[str, str] | None = None,
) -> Response:
    ctx = context(request)
    names = await _accounts(request, who)
    rows = [
        (p, account)
        for p, account in await call(who, providers.list_providers, ctx.engine)
        if who.actor.scope.sees(p.account_id)
    ]
    return render(
        request,
        "providers.html",
        who,
        status,
        notice,
        rows=rows,
        kinds=sorted(KINDS),
        accounts=names,
        own=_own(who, names),
        legs=legs,
        form=form or {},
    )


async def providers_list(request: Request) -> Response:
    return await _providers_page(request, await signed_in(request))


async def provider_add(request: Request) -> Response:
    who, form = await may_post(request)
    ctx = context(request)
    try:
        config = providers.ProviderConfig(
            form.get("name", ""),
            form.get("kind", ""),
            _options(form),
            _secrets(form),
            form.get("domain") or None,
        )
        with scope.acting(who.actor):
            row, result = await provider_checks.add_checked(
                ctx.engine,
                ctx.box,
                form.get("account", ""),
                config,
                ctx.settings.server.hostname,
                check=form.get("check") == "on",
            )
    except provider_checks.CheckFailed as exc:
        return await _providers_page(request, who, 422, failed(exc), exc.result.legs, form)
    except RelayError as exc:
        return await _providers_page(request, who, status_of(exc), failed(exc), None, form)
    text = f"Added provider {row.name}" + (" after its live check." if result else ".")
    return await _providers_page(request, who, 200, ok(text), result.legs if result else None)


async def _provider_page(
    request: Request,
    who: Identity,
    status: int = 200,
    notice: Notice | None = None,
    legs: Any = None,
) -> Response:
    ctx = context(request)
    name = request.path_params["name"]
    await call(who, scope.require, ctx.engine, scope.of_provider(), name=name)
    shown = await call(who, providers.show_provider, ctx.engine, ctx.box, name)
    config = await call(who, providers.load_config, ctx.engine, ctx.box, name)
    egress = await anyio.to_thread.run_sync(provider_checks.egress_addresses, config)
    names = await _accounts(request, who)
    shown["used_by"] = [n for n in shown["used_by"] if n in names]
    return render(
        request,
        "provider.html",
        who,
        status,
        notice,
        p=shown,
        egress=egress,
        accounts=names,
        own=_own(who, names),
        legs=legs,
    )


async def provider(request: Request) -> Response:
    return await _provider_page(request, await signed_in(request))


async def provider_edit(request: Request) -> Response:
    who, form = await may_post(request)
    ctx = context(request)
    name = request.path_params["name"]
    await call(who, scope.require, ctx.engine, scope.of_provider(), name=name)
    try:
        options = _options(form)
        if "allow_insecure_tls" not in form and form.get("has_insecure_switch"):
            options["allow_insecure_tls"] = False
        with scope.acting(who.actor):
            _, result = await provider_checks.edit_checked(
                ctx.engine,
                ctx.box,
                name,
                options,
                _secrets(form),
                form.get("domain") or None,
                ctx.settings.server.hostname,
                check=form.get("check") == "on",
            )
    except provider_checks.CheckFailed as exc:
        return await _provider_page(request, who, 422, failed(exc), exc.result.legs)
    except RelayError as exc:
        return await _provider_page(request, who, status_of(exc), failed(exc))
    text = "Saved" + (" after the live check passed." if result else ".")
    return await _provider_page(request, who, 200, ok(text), result.legs if result else None)


async def provider_test(request: Request) -> Response:
    who, form = await may_post(request)
    ctx = context(request)
    name = request.path_params["name"]
    await call(who, scope.require, ctx.engine, scope.of_provider(), name=name)
    config = await call(who, providers.load_config, ctx.engine, ctx.box, name)
    try:
        result = await provider_checks.test_send(
            config, form.get("to", ""), ctx.settings.server.hostname
        )
    except RelayError as exc:
        return await _provider_page(request, who, status_of(exc), failed(exc))
    if not result.ok and ctx.notify is not None:  # the owner is told, as by the API
        notice = await call(who, notifications.check_failed, ctx.engine, name, result.detail)
        if notice is not None:
            ctx.notify(notice)
    if result.ok:
        return await _provider_page(
            request, who, 200, ok("The test message was accepted."), result.legs
        )
    return await _provider_page(
        request, who, 422, Notice("error", "The test failed: " + result.detail), result.legs
    )


async def provider_default(request: Request) -> Response:
    who, form = await may_post(request)
    ctx = context(request)
    name = request.path_params["name"]
    which = form.get("scope", "own")
    try:
        await call(who, providers.set_default, ctx.engine, name, form.get("account", ""), which)
    except RelayError as exc:
        return await _provider_page(request, who, status_of(exc), failed(exc))
    whose = "its sub-accounts" if which == "subaccounts" else "its own mail"
    return await _provider_page(
        request, who, 200, ok(f"{name} is now the default of {form.get('account')} for {whose}.")
    )


async def provider_assign(request: Request) -> Response:
    who, form = await may_post(request)
    ctx = context(request)
    name = request.path_params["name"]
    try:
        await call(who, providers.assign, ctx.engine, name, form.get("account", ""))
    except RelayError as exc:
        return await _provider_page(request, who, status_of(exc), failed(exc))
    return await _provider_page(
        request, who, 200, ok(f"{form.get('account')} now sends through {name}.")
    )


# -- paused and failed mail --------------------------------------------------------------


MAIL_PAGE = 100  # rows a screen of paused or failed mail shows; "Older" pages on


async def _mail_page(
    request: Request, who: Identity, status: int = 200, notice: Notice | None = None
) -> Response:
    """The filters are the service's (SQL, paged, scoped): what a page shows is
    what "release all" or "discard all" with the same filters moves."""
    ctx = context(request)
    q = request.query_params
    filters = {
        key: (q.get(key) or "").strip() for key in ("account", "sender", "reason", "campaign")
    }
    state = q.get("state") if q.get("state") in ("paused", "failed") else "paused"
    error = None
    rows: list[Any] = []
    more = None
    try:
        page = await call(
            who,
            queue_service.page_messages,
            ctx.engine,
            who.actor.scope,
            state=state,
            **{key: value or None for key, value in filters.items()},
            cursor=q.get("cursor") or None,
            limit=MAIL_PAGE,
        )
        rows, more = page.items, page.next_cursor
    except RelayError as exc:
        error, status = failed(exc), status_of(exc)
    names = await _accounts(request, who)
    here = {"state": state, **{k: v for k, v in filters.items() if v}}
    return render(
        request,
        "mail.html",
        who,
        status,
        notice or error,
        rows=rows,
        state=state,
        accounts=names,
        own=_own(who, names),
        filters=filters,
        here=urlencode(here),
        older=urlencode({**here, "cursor": more}) if more else None,
    )


async def mail(request: Request) -> Response:
    return await _mail_page(request, await signed_in(request))


async def mail_act(request: Request) -> Response:
    who, form = await may_post(request)
    ctx = context(request)
    action = request.path_params["action"]
    if action not in ("release", "discard"):
        raise NotFound(f"no such action: {action}")
    fn: Any = (
        queue_service.release_messages if action == "release" else queue_service.discard_messages
    )
    queue_id = form.get("queue_id") or None
    kwargs: dict[str, Any] = {}
    if not queue_id:
        # The same filters as the listing: one service call selects and moves them.
        keys = ("account", "sender", "reason", "campaign")
        kwargs = {key: (form.get(key) or "").strip() or None for key in keys}
        if not kwargs["account"]:
            return await _mail_page(
                request,
                who,
                422,
                Notice("error", "Choose the account whose paused mail to act on."),
            )
    try:
        done: Any = await call(who, lambda: fn(ctx.engine, queue_id, **kwargs))
    except RelayError as exc:
        return await _mail_page(request, who, status_of(exc), failed(exc))
    what = "Released" if action == "release" else "Discarded"
    if queue_id:
        text = f"{what} {queue_id}."
    else:
        count = len(done) if action == "release" else len({row[0] for row in done})
        text = f"{what} {count} paused message(s) of {kwargs['account']}."
    return await _mail_page(request, who, 200, ok(text))


# -- suppressions -----------------------------------------------------------------------


async def _suppressions_page(
    request: Request, who: Identity, status: int = 200, notice: Notice | None = None
) -> Response:
    engine = context(request).engine
    names, account, found, notice = await _of_account(
        request,
        who,
        notice,
        lambda name: call(who, suppressions.list_suppressions, engine, name, None, None, 200, 0),
    )
    rows, total = found if found is not None else ([], 0)
    return render(
        request,
        "suppressions.html",
        who,
        status,
        notice,
        rows=rows,
        total=total,
        account=account,
        accounts=names,
    )


async def _of_account(
    request: Request,
    who: Identity,
    notice: Notice | None,
    read: Callable[[str], Awaitable[R]],
) -> tuple[list[str], str, R | None, Notice | None]:
    """A screen about one account (``?account=``, else the user's own): the accounts
    to choose from, the one shown, what ``read`` found for it (None when refused,
    with the refusal as the notice; out of scope stays "not found")."""
    names = await _accounts(request, who)
    account = request.query_params.get("account") or _own(who, names)
    found = None
    if account:
        try:
            found = await read(account)
        except RelayError as exc:
            if status_of(exc) == 404:
                raise
            notice = notice or failed(exc)
    return names, account, found, notice


async def suppressions_page(request: Request) -> Response:
    return await _suppressions_page(request, await signed_in(request))


async def suppression_act(request: Request) -> Response:
    who, form = await may_post(request)
    ctx = context(request)
    account, address = form.get("account", ""), form.get("address", "").strip()
    try:
        action = request.path_params["action"]
        if action not in ("add", "remove"):
            raise NotFound(f"no such action: {action}")
        if action == "add":
            await call(who, suppressions.add_suppression, ctx.engine, account, address)
            text = f"{address} is suppressed: mail to it is not sent."
        else:
            await call(who, suppressions.remove_suppression, ctx.engine, account, address)
            text = f"{address} is no longer suppressed."
    except RelayError as exc:
        return await _suppressions_page(request, who, status_of(exc), failed(exc))
    return await _suppressions_page(request, who, 200, ok(text))


# -- usage ----------------------------------------------------------------------------

CHART_DAYS = 14


@dataclass(frozen=True)
class Bar:
    day: dt.date
    counts: dict[str, int]
    total: int
    x: int
    heights: list[tuple[str, int, int]]  # (class, y, height)


def _usage_account(who: Identity, request: Request) -> str | None:
    chosen = request.query_params.get("account") or None
    if chosen or who.actor.scope.everything:
        return chosen
    return who.account


async def usage_page(request: Request) -> Response:
    who = await signed_in(request)
    ctx = context(request)
    account = _usage_account(who, request)
    today = dt.datetime.now(dt.UTC).date()
    days = [today - dt.timedelta(days=n) for n in range(CHART_DAYS - 1, -1, -1)]

    def read() -> tuple[Any, list[tuple[dt.date, Any]]]:
        whole = usage.usage_report(ctx.engine, ctx.price_per_1000, account, days[0], today)
        each = [
            (d, usage.usage_report(ctx.engine, ctx.price_per_1000, account, d, d)) for d in days
        ]
        return whole, each

    whole, each = await call(who, read)
    per_day = [(d, _period(r, d.isoformat())) for d, r in each]
    classes = sorted({c for _, p in per_day for c in p.classes})
    top = max([p.recipients for _, p in per_day] + [1])
    bars = []
    for i, (d, p) in enumerate(per_day):
        y, heights = 160, []
        for c in classes:
            h = round(140 * p.classes.get(c, 0) / top)
            y -= h
            heights.append((c, y, h))
        bars.append(Bar(d, p.classes, p.recipients, 40 + i * 40, heights))
    return render(
        request,
        "usage.html",
        who,
        report=whole,
        total=_period(whole, "total"),
        bars=bars,
        classes=classes,
        top=top,
        account=account or "",
        accounts=await _accounts(request, who),
        first=days[0],
        last=today,
        price=ctx.price_per_1000,
    )


async def usage_csv(request: Request) -> Response:
    who = await signed_in(request)
    ctx = context(request)
    account = _usage_account(who, request)
    q = request.query_params
    try:
        report = await call(
            who,
            usage.usage_report,
            ctx.engine,
            ctx.price_per_1000,
            account,
            q.get("from") or None,
            q.get("to") or None,
        )
    except RelayError as exc:
        return Response(str(exc) + "\n", status_code=status_of(exc), media_type="text/plain")
    return Response(
        render_csv(report),
        media_type="text/csv",
        headers={"Content-Disposition": 'attachment; filename="relay-usage.csv"'},
    )


# -- audit log -------------------------------------------------------------------------


async def audit_page(request: Request) -> Response:
    who = await signed_in(request)
    ctx = context(request)
    cursor = request.query_params.get("cursor") or None
    notice = None
    entries: list[Any] = []
    more = None
    try:
        page = await call(
            who, audit.list_entries, ctx.engine, who.actor.scope, cursor=cursor, limit=100
        )
        entries, more = page.items, page.next_cursor
    except RelayError as exc:
        notice = failed(exc)
    return render(request, "audit.html", who, 200, notice, entries=entries, more=more)


# -- limits ---------------------------------------------------------------------------


async def _limits_page(
    request: Request, who: Identity, status: int = 200, notice: Notice | None = None
) -> Response:
    """An account's sending limits with what is used and left, and (for whoever may
    set them: the operator, an agency for its sub-accounts) the form that sets them."""
    engine = context(request).engine
    names, account, view, notice = await _of_account(
        request, who, notice, lambda name: call(who, limits.account_limits, engine, name)
    )
    return render(
        request,
        "limits.html",
        who,
        status,
        notice,
        view=view,
        account=account,
        accounts=names,
    )


async def limits_page(request: Request) -> Response:
    return await _limits_page(request, await signed_in(request))


async def limits_set(request: Request) -> Response:
    """Set an account's limits: the service says who may and within what."""
    who, form = await may_post(request)
    ctx = context(request)
    account = form.get("account", "")
    try:
        changes = limits.parse_changes(
            [v for v in (form.get("per_minute", ""), form.get("per_hour", "")) if v.strip()],
            [v for v in (form.get("rcpt_hour", ""), form.get("rcpt_day", "")) if v.strip()],
            form.get("sessions", "").strip() or None,
        )
        if not changes:
            raise Invalid("give at least one limit (for example 100/min, or off)", "limits")
        view = await call(who, limits.set_account_limits, ctx.engine, account, changes)
    except RelayError as exc:
        request.scope["query_string"] = f"account={account}".encode()
        return await _limits_page(request, who, status_of(exc), failed(exc))
    request.scope["query_string"] = f"account={account}".encode()
    changed = ", ".join(view.changed) or "nothing"
    return await _limits_page(request, who, 200, ok(f"Limits of {account} changed: {changed}."))


def _route(path: str, handler: Any, methods: list[str] | None = None) -> Route:
    return Route(path, guarded(handler), methods=methods or ["GET"])


ROUTES = [
    Route("/sign-in", sign_in_page, methods=["GET"]),
    Route("/sign-in", sign_in, methods=["POST"]),
    _route("/sign-out", sign_out, ["POST"]),
    _route("/", home),
    _route("/domains", domains),
    _route("/domains", domain_add, ["POST"]),
    _route("/domains/{domain}/verify", domain_verify, ["POST"]),
    _route("/senders/send-code", sender_send_code, ["POST"]),
    _route("/senders/confirm", sender_confirm, ["POST"]),
    _route("/domains/{domain}/credentials", credentials),
    _route("/domains/{domain}/credentials", credential_create, ["POST"]),
    _route("/domains/{domain}/credentials/{username}/reset", credential_reset, ["POST"]),
    _route("/domains/{domain}/credentials/{username}/delete", credential_delete, ["POST"]),
    _route("/providers", providers_list),
    _route("/providers", provider_add, ["POST"]),
    _route("/providers/{name}", provider),
    _route("/providers/{name}/edit", provider_edit, ["POST"]),
    _route("/providers/{name}/test", provider_test, ["POST"]),
    _route("/providers/{name}/default", provider_default, ["POST"]),
    _route("/providers/{name}/assign", provider_assign, ["POST"]),
    _route("/mail", mail),
    _route("/mail/{action:str}", mail_act, ["POST"]),
    _route("/suppressions", suppressions_page),
    _route("/suppressions/{action:str}", suppression_act, ["POST"]),
    _route("/usage", usage_page),
    _route("/usage.csv", usage_csv),
    _route("/audit", audit_page),
    _route("/limits", limits_page),
    _route("/limits", limits_set, ["POST"]),
]
