"""The web console in a real browser: Debian's Chromium, headless, driven by selenium
through Debian's chromedriver (nothing is downloaded; scripts/test installs both).

One browser and one relay for the module (the suite's time budget); each test
signs in afresh. The relay runs with its SMTP listeners, the admin listener
and no delivery workers (accepted mail stays queued, paused mail paused); the
provider check goes to the project's emulator over real HTTP and SMTP.

With ``RELAY_CONSOLE_SCREENSHOTS=DIR`` the screen tour saves each screen at
desktop and phone widths into DIR (``docs/console/`` holds the published set).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import Select, WebDriverWait
from sqlalchemy import Engine, select

from relay.core.settings import Settings
from relay.emulator import Emulator
from relay.service import providers
from relay.store.models import Credential, Message, Sender
from tests.api_support import World, api_settings, build_world
from tests.console_support import USER_PASSWORD, make_user
from tests.emulated import API_KEY, EmulatorThread, add_emulated_provider
from tests.support import RelayThread, connect, fresh_engine, message
from tests.test_sender_proof import TEST_ADDRESS, mailed_code

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
        reason="needs Debian's chromium and chromium-driver (scripts/test installs them)",
    ),
]
DESKTOP, PHONE = (1280, 900), (390, 844)


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium must never fetch a driver
    profile = tempfile.mkdtemp(prefix="relay-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        f"--window-size={DESKTOP[0]},{DESKTOP[1]}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(20)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    var = tmp_path_factory.mktemp("console") / "var"
    return api_settings(var, None, auth={"max_failures_per_user": 3})


@pytest.fixture(scope="module")
def engine(settings: Settings) -> Iterator[Engine]:
    engine = fresh_engine(settings)
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def world(settings: Settings, engine: Engine) -> World:
    world = build_world(settings, engine)
    make_user(settings, engine, "boss@agency-a.test", "agency-a")
    make_user(settings, engine, "viewer@agency-a.test", "agency-a", role="viewer")
    make_user(settings, engine, "b@agency-b.test", "agency-b")
    make_user(settings, engine, "locked@agency-a.test", "agency-a")  # the lock-out test's own
    return world


@pytest.fixture(scope="module")
def relay(settings: Settings, engine: Engine, world: World) -> Iterator[RelayThread]:
    thread = RelayThread(settings, engine).start()
    yield thread
    thread.stop()


@pytest.fixture(scope="module")
def emulator() -> Iterator[Emulator]:
    thread = EmulatorThread()
    yield thread.start()
    thread.stop()


@pytest.fixture
def site(relay: RelayThread, browser: WebDriver) -> Iterator[str]:
    assert relay.relay is not None
    base = f"http://127.0.0.1:{relay.relay.admin_port}"
    yield base
    browser.delete_all_cookies()
    browser.set_window_size(*DESKTOP)


def submit(browser: WebDriver, element: WebElement, keys: str | None = None) -> None:
    """Click ``element`` (or type ``keys`` into it) and wait, at most 15 s, for the next page."""
    page = browser.find_element(By.TAG_NAME, "html")
    if keys is None:
        element.click()
    else:
        element.send_keys(keys)
    WebDriverWait(browser, 15).until(expected_conditions.staleness_of(page))


def button(browser: WebDriver, text: str) -> WebElement:
    return browser.find_element(By.XPATH, f"//button[text()='{text}']")


def sign_in(browser: WebDriver, site: str, email: str, password: str = USER_PASSWORD) -> None:
    """Type and press Enter, as a keyboard user would."""
    browser.get(site + "/sign-in")
    browser.find_element(By.ID, "email").send_keys(email)
    submit(browser, browser.find_element(By.ID, "password"), password + Keys.ENTER)


def notice(browser: WebDriver) -> str:
    return str(browser.find_element(By.CSS_SELECTOR, ".notice").text)


def heading(browser: WebDriver) -> str:
    return str(browser.find_element(By.TAG_NAME, "h1").text)


def test_sign_in_and_out(browser: WebDriver, site: str) -> None:
    browser.get(site + "/")
    assert browser.current_url.endswith("/sign-in")
    sign_in(browser, site, "boss@agency-a.test", "not-the-password")
    assert "Wrong email or password" in notice(browser)
    sign_in(browser, site, "boss@agency-a.test")
    assert heading(browser) == "Dashboard"
    assert "boss@agency-a.test" in browser.find_element(By.CSS_SELECTOR, ".me").text
    submit(browser, browser.find_element(By.CSS_SELECTOR, ".signout button"))
    assert browser.current_url.endswith("/sign-in")
    browser.get(site + "/domains")
    assert "/sign-in" in browser.current_url


def test_create_a_credential_and_send_through_it(
    browser: WebDriver, site: str, relay: RelayThread, engine: Engine
) -> None:
    sign_in(browser, site, "boss@agency-a.test")
    browser.get(site + "/domains/a-one.test/credentials")
    browser.find_element(By.ID, "local").send_keys("shop")
    submit(browser, button(browser, "Create credential"))
    assert "Created shop@a-one.test" in notice(browser)
    password = browser.find_element(By.ID, "new-password").text
    block = browser.find_element(By.ID, "settings-block").text
    assert "Username: shop@a-one.test" in block and "Host: relay.test" in block
    with connect(relay, "submission", login=("shop@a-one.test", password)) as smtp:
        refused = smtp.sendmail("app@a-one.test", ["bob@example.org"], message("app@a-one.test"))
    assert refused == {}
    with engine.connect() as conn:
        used = (
            conn.execute(
                select(Message.state)
                .join(Credential, Credential.id == Message.credential_id)
                .where(Credential.username == "shop@a-one.test")
            )
            .scalars()
            .all()
        )
    assert used == ["queued"]


def add_provider(browser: WebDriver, emulator: Emulator, name: str, key: str) -> None:
    fields = {
        "p-name": name,
        "p-api_key": key,
        "p-api_url": emulator.sendgrid_url,
        "p-smtp_host": emulator.host,
        "p-smtp_port": str(emulator.smtp_port),
        "p-smtp_user": "apikey",
        "p-smtp_password": key,
        "p-test_address": "ops@a-one.test",
    }
    Select(browser.find_element(By.ID, "p-kind")).select_by_value("sendgrid")
    Select(browser.find_element(By.ID, "p-account")).select_by_value("a-one")
    Select(browser.find_element(By.ID, "p-smtp_tls")).select_by_value("none")
    for field, value in fields.items():
        element = browser.find_element(By.ID, field)
        element.clear()
        element.send_keys(value)
    submit(browser, button(browser, "Add provider"))


def test_add_a_provider_against_the_emulator(
    browser: WebDriver, site: str, emulator: Emulator
) -> None:
    sign_in(browser, site, "boss@agency-a.test")
    browser.get(site + "/providers")
    add_provider(browser, emulator, "grid", API_KEY)
    assert "Added provider grid after its live check" in notice(browser)
    legs = browser.find_element(By.CSS_SELECTOR, "table.legs").text
    assert "api" in legs and "smtp" in legs and "failed" not in legs
    assert emulator.sendgrid.accepted()[-1]["from"]["email"] == "ops@a-one.test"
    # A wrong key is refused in the provider's own words, and nothing is saved.
    add_provider(browser, emulator, "grid2", "SG.wrong-key-123456")
    assert "failed its live check" in notice(browser)
    assert "failed" in browser.find_element(By.CSS_SELECTOR, "table.legs").text
    assert "grid2" not in browser.find_element(By.CSS_SELECTOR, "main table:not(.legs)").text
    browser.get(site + "/providers/grid")
    assert heading(browser) == "Provider grid"
    assert browser.find_elements(By.CSS_SELECTOR, "#egress li")


def test_pause_and_release_a_campaign_message(
    browser: WebDriver, site: str, relay: RelayThread, engine: Engine
) -> None:
    sign_in(browser, site, "boss@agency-a.test")
    browser.get(site + "/domains/a-two.test/credentials")
    browser.find_element(By.ID, "local").send_keys("news")
    Select(browser.find_element(By.ID, "purpose")).select_by_value("campaign")
    submit(browser, browser.find_element(By.ID, "local"), Keys.ENTER)
    password = browser.find_element(By.ID, "new-password").text
    sender = "promo@unproved.test"  # never verified: campaign mail from it is paused
    with connect(relay, "submission", login=("news@a-two.test", password)) as smtp:
        smtp.sendmail(sender, ["fan@example.org"], message(sender, "fan@example.org"))
    with engine.connect() as conn:
        queue_id = conn.execute(select(Message.id).where(Message.mail_from == sender)).scalar_one()
    browser.get(site + "/mail")
    submit(browser, browser.find_element(By.ID, "f-sender"), sender + Keys.ENTER)
    rows = browser.find_elements(By.CSS_SELECTOR, "main table tbody tr")
    assert len(rows) == 1 and queue_id in rows[0].text and "a-two" in rows[0].text
    submit(browser, rows[0].find_element(By.XPATH, ".//button[text()='Release']"))
    assert f"Released {queue_id}" in notice(browser)
    with engine.connect() as conn:
        state = conn.execute(select(Message.state).where(Message.id == queue_id)).scalar_one()
    assert state == "queued"


def test_verify_an_address_by_the_code_mailed_to_it(
    browser: WebDriver, site: str, settings: Settings, engine: Engine, emulator: Emulator
) -> None:
    """Mail a code from the senders screen, read it from the mail the emulated
    SendGrid took (as tests/test_sender_proof.py does), type it in: verified."""
    add_emulated_provider(
        settings, engine, emulator, "a-one-codes", "sendgrid", "agency-a", test_address=TEST_ADDRESS
    )
    providers.assign(engine, "a-one-codes", "a-one")
    address = "owner@example.org"
    sign_in(browser, site, "boss@agency-a.test")
    browser.get(site + "/domains")
    browser.find_element(By.ID, "address").send_keys(address)
    Select(browser.find_element(By.ID, "code-account")).select_by_value("a-one")
    submit(browser, button(browser, "Mail a code"))
    assert f"A code was mailed to {address}" in notice(browser)
    code = mailed_code(emulator, address)
    # The confirm form starts on the address and account the code went to.
    assert browser.find_element(By.ID, "confirm-address").get_attribute("value") == address
    chosen = Select(browser.find_element(By.ID, "confirm-account")).first_selected_option
    assert chosen.get_attribute("value") == "a-one"
    submit(browser, browser.find_element(By.ID, "code"), code + Keys.ENTER)
    assert f"{address} is verified." in notice(browser)
    rows = [
        r.text
        for r in browser.find_elements(By.CSS_SELECTOR, "main table tbody tr")
        if r.text.startswith(address)
    ]
    assert rows == [f"{address} a-one yes (confirmation)"]
    with engine.connect() as conn:
        stored = conn.execute(
            select(Sender.verified, Sender.method).where(Sender.pattern == address)
        ).all()
    assert [tuple(r) for r in stored] == [(True, "confirmation")]


def test_a_tenant_cannot_see_another_tenants_domain(browser: WebDriver, site: str) -> None:
    sign_in(browser, site, "b@agency-b.test")
    browser.get(site + "/domains")
    assert "b-one.test" in browser.page_source and "a-one.test" not in browser.page_source
    browser.get(site + "/domains/a-one.test/credentials")
    assert heading(browser).startswith("domain a-one.test does not exist")


def test_a_viewer_has_no_buttons_and_a_form_without_csrf_is_refused(
    browser: WebDriver, site: str
) -> None:
    sign_in(browser, site, "viewer@agency-a.test")
    browser.get(site + "/domains/a-one.test/credentials")
    assert not browser.find_elements(By.XPATH, "//button[text()='Create credential']")
    assert not browser.find_elements(By.XPATH, "//button[text()='Delete']")
    browser.delete_all_cookies()
    sign_in(browser, site, "boss@agency-a.test")
    browser.get(site + "/domains")
    browser.execute_script(
        "document.querySelector('form[action=\"/domains\"] input[name=csrf]').remove()"
    )
    submit(browser, browser.find_element(By.ID, "domain"), "forged.a-one.test" + Keys.ENTER)
    assert "security token" in heading(browser)


def test_lock_out_after_failed_sign_ins(browser: WebDriver, site: str) -> None:
    for _ in range(3):
        sign_in(browser, site, "locked@agency-a.test", "wrong-password-x")
        assert "Wrong email or password" in notice(browser)
    sign_in(browser, site, "locked@agency-a.test")
    assert "Too many failed sign-ins" in notice(browser)


SCREENS = (
    ("dashboard", "/"),
    ("domains", "/domains"),
    ("credentials", "/domains/a-one.test/credentials"),
    ("providers", "/providers"),
    ("provider", "/providers/agency-a-outbox"),
    ("mail", "/mail"),
    ("suppressions", "/suppressions"),
    ("usage", "/usage"),
    ("audit", "/audit"),
)


def test_every_screen_fits_a_phone_and_labels_every_field(browser: WebDriver, site: str) -> None:
    shots = os.environ.get("RELAY_CONSOLE_SCREENSHOTS")
    out = Path(shots) if shots else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
        browser.get(site + "/sign-in")
        browser.save_screenshot(str(out / "sign-in-desktop.png"))
    sign_in(browser, site, "boss@agency-a.test")
    for name, path in SCREENS:
        for width, size in (("desktop", DESKTOP), ("phone", PHONE)):
            browser.set_window_size(*size)
            browser.get(site + path)
            assert browser.find_element(By.TAG_NAME, "h1").text, name
            unlabelled = browser.execute_script(
                "return [...document.querySelectorAll('input:not([type=hidden]), select')]"
                ".filter(e => !e.labels || e.labels.length === 0).map(e => e.name || e.id)"
            )
            assert unlabelled == [], (name, unlabelled)
            overflow = browser.execute_script(
                "return document.documentElement.scrollWidth - window.innerWidth"
            )
            assert overflow <= 1, (name, width, overflow)
            if out:
                browser.save_screenshot(str(out / f"{name}-{width}.png"))


# -- the keyboard alone ----------------------------------------------------------------
#
# Keys go to whatever has focus (ActionChains), never to an element found by the
# test: what a keyboard user cannot reach, these tests cannot either.

FOCUSABLE = "a[href], button, input:not([type=hidden]), select, textarea"


def press(browser: WebDriver, keys: str) -> None:
    ActionChains(browser).send_keys(keys).perform()


def tab_to(browser: WebDriver, selector: str, limit: int = 80) -> None:
    """Press Tab until the focused element matches ``selector`` (at most ``limit`` times)."""
    for _ in range(limit):
        press(browser, Keys.TAB)
        if browser.execute_script("return document.activeElement.matches(arguments[0])", selector):
            return
    raise AssertionError(f"{selector} is not reachable with Tab")


def enter_and_wait(browser: WebDriver) -> None:
    """Press Enter on the focused link or field and wait, at most 15 s, for the next page."""
    page = browser.find_element(By.TAG_NAME, "html")
    press(browser, Keys.ENTER)
    WebDriverWait(browser, 15).until(expected_conditions.staleness_of(page))


def focus_ring(browser: WebDriver) -> tuple[str, float]:
    """The focused element's outline: (style, width in px)."""
    style, width = browser.execute_script(
        "const s = getComputedStyle(document.activeElement);"
        "return [s.outlineStyle, parseFloat(s.outlineWidth)];"
    )
    return str(style), float(width)


def test_sign_in_and_create_a_credential_with_the_keyboard_alone(
    browser: WebDriver, site: str, engine: Engine
) -> None:
    browser.get(site + "/sign-in")  # the email field has autofocus
    assert browser.execute_script("return document.activeElement.id") == "email"
    press(browser, "boss@agency-a.test")
    tab_to(browser, "#password")
    press(browser, USER_PASSWORD)
    tab_to(browser, "button[type=submit]")
    assert focus_ring(browser)[0] != "none"
    enter_and_wait(browser)
    assert heading(browser) == "Dashboard"
    tab_to(browser, "a[href='/domains']")
    style, width = focus_ring(browser)
    assert style != "none" and width >= 2, (style, width)
    enter_and_wait(browser)
    tab_to(browser, "a[href='/domains/a-one.test/credentials']")
    enter_and_wait(browser)
    assert heading(browser).startswith("SMTP credentials")
    tab_to(browser, "#local")
    assert focus_ring(browser)[0] != "none"
    press(browser, "keys")
    tab_to(browser, "#purpose")
    press(browser, Keys.ARROW_DOWN)  # transactional -> campaign, as a select takes keys
    tab_to(browser, "form[action$='/credentials'] button[type=submit]")
    enter_and_wait(browser)
    assert "Created keys@a-one.test" in notice(browser)
    with engine.connect() as conn:
        purpose = conn.execute(
            select(Credential.purpose).where(Credential.username == "keys@a-one.test")
        ).scalar_one()
    assert purpose == "campaign"


def test_every_control_of_every_screen_is_reached_with_tab_and_shows_focus(
    browser: WebDriver, site: str
) -> None:
    css = Path(__file__).parents[1] / "relay" / "console" / "static" / "console.css"
    assert ":focus-visible" in css.read_text()
    sign_in(browser, site, "boss@agency-a.test")
    for name, path in (*SCREENS, ("limits", "/limits")):
        for size in (DESKTOP, PHONE):
            browser.set_window_size(*size)
            browser.get(site + path)
            wanted = browser.execute_script(
                "window.relaySeen = new Set(); window.relayRings = [];"
                "document.addEventListener('focusin', e => {"
                "  window.relaySeen.add(e.target);"
                "  const s = getComputedStyle(e.target);"
                "  if (s.outlineStyle === 'none' || parseFloat(s.outlineWidth) < 2)"
                "    window.relayRings.push(e.target.outerHTML.slice(0, 80)); });"
                "return [...document.querySelectorAll(arguments[0])]"
                "  .filter(e => !e.disabled && e.getClientRects().length > 0).length;",
                FOCUSABLE,
            )
            press(browser, Keys.TAB * (int(wanted) + 2))
            missed, unringed = browser.execute_script(
                "return [[...document.querySelectorAll(arguments[0])]"
                "  .filter(e => !e.disabled && e.getClientRects().length > 0)"
                "  .filter(e => !window.relaySeen.has(e)).map(e => e.outerHTML.slice(0, 80)),"
                " window.relayRings];",
                FOCUSABLE,
            )
            assert missed == [], (name, size, missed)
            assert unringed == [], (name, size, unringed)
