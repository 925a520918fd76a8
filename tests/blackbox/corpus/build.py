# mypy: ignore-errors
"""Writes the corpus files beside it (`uv run python tests/blackbox/corpus/build.py`): the webhook sequences and
their expected end states, built from the product's rules. The JSON files are what the tests read; this script
only saves writing the repetitive parts of Meta's envelopes by hand."""

import json
import sys
from pathlib import Path

OUT = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent


def value(number, contacts=None, messages=None, statuses=None):
    v = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": f"${{{number}.display}}", "phone_number_id": f"${{{number}}}"},
    }
    if contacts is not None:
        v["contacts"] = contacts
    if messages is not None:
        v["messages"] = messages
    if statuses is not None:
        v["statuses"] = statuses
    return v


def change(number, **kw):
    return {"value": value(number, **kw), "field": "messages"}


def body(*entries):
    return {"object": "whatsapp_business_account", "entry": list(entries)}


def entry(number, *changes):
    return {"id": f"${{{number}.waba}}", "changes": list(changes)}


def one(number, contacts=None, messages=None, statuses=None):
    return body(entry(number, change(number, contacts=contacts, messages=messages, statuses=statuses)))


def who(customer, name):
    return {"profile": {"name": name}, "wa_id": f"${{c:{customer}}}"}


def text(customer, wamid, t, text_body):
    return {
        "from": f"${{c:{customer}}}",
        "id": f"${{w:{wamid}}}",
        "timestamp": f"${{t:{t}}}",
        "type": "text",
        "text": {"body": text_body},
    }


def msg(customer, wamid, t, type_, obj, **extra):
    m = {"from": f"${{c:{customer}}}", "id": f"${{w:{wamid}}}", "timestamp": f"${{t:{t}}}", "type": type_}
    if obj is not None:
        m[type_] = obj
    m.update(extra)
    return m


def status(out, customer, st, t):
    return {"id": f"${{o:{out}}}", "status": st, "timestamp": f"${{t:{t}}}", "recipient_id": f"${{c:{customer}}}"}


def deliver(app, b, copies=1, encoding="meta", via=None):
    d = {"deliver": b, "app": app}
    if via:
        d["via"] = via
    if copies != 1:
        d["copies"] = copies
    if encoding != "meta":
        d["encoding"] = encoding
    return d


def inbound(wamid, customer, t, text_body, **kw):
    item = {
        "wamid": f"${{w:{wamid}}}",
        "direction": "in",
        "type": "text",
        "text": text_body,
        "reactions": [],
        "edited": False,
        "revoked": False,
    }
    item.update(kw)
    return item


def window(t):
    return {"open": True, "expires_at": f"${{iso:{t + 86400}}}"}


def contact(tenant, customer, profile_name):
    return {
        "tenant": tenant,
        "customer": "c:" + customer,
        "wa_id": f"${{c:{customer}}}",
        "phone_e164": f"+${{c:{customer}}}",
        "profile_name": profile_name,
        "name": None,
        "deleted": False,
        "blacklisted": False,
    }


def chat(number, customer, unread, last, win, timeline, display_name):
    return {
        "number": number,
        "customer": "c:" + customer,
        "unread_count": unread,
        "last_message": last,
        "window": win,
        "display_name": display_name,
        "timeline": timeline,
    }


def write(name, description, steps, chats, contacts, absent_contacts=()):
    doc = {"name": name, "description": description, "steps": steps, "expect": {"chats": chats, "contacts": contacts}}
    if absent_contacts:
        doc["expect"]["absent_contacts"] = list(absent_contacts)
    (OUT / f"{name}.json").write_text(json.dumps(doc, indent=1, ensure_ascii=True) + "\n")


# 1. duplicates -----------------------------------------------------------------------------------------------
m1 = text("ana", "m1", 0, "Hi, is my order shipped?")
m2 = text("ana", "m2", 5, "It is order 4471.")
write(
    "duplicates",
    "The same body delivered three times, then the same message re-batched in another body (beside a new one), "
    "also three times: one message each, counted once.",
    [
        deliver("A", one("A1", [who("ana", "Ana Duarte")], [m1]), copies=3),
        deliver("A", one("A1", [who("ana", "Ana Duarte")], [m2, m1]), copies=3),
    ],
    [
        chat(
            "A1",
            "ana",
            2,
            {"direction": "in", "type": "text", "preview": "It is order 4471."},
            window(5),
            [inbound("m2", "ana", 5, "It is order 4471."), inbound("m1", "ana", 0, "Hi, is my order shipped?")],
            "Ana Duarte",
        )
    ],
    [contact("A", "ana", "Ana Duarte")],
)

# 2. statuses read -> delivered -> sent, each duplicated --------------------------------------------------------
write(
    "statuses_reversed",
    "An agent answers; Meta reports the answer's statuses in reverse order (read, delivered, sent), each three "
    "times: the message ends read.",
    [
        deliver(
            "A",
            one("A1", [who("bo", "Bo Lindqvist")], [text("bo", "m1", 0, "Can I change my address?")]),
            via="simulator",
        ),
        {"read": {"number": "A1", "customer": "c:bo"}, "after": ["${w:m1}"]},
        {"send": {"number": "A1", "customer": "c:bo", "text": "Yes: reply with the new one.", "as": "o1"}},
        deliver("A", one("A1", statuses=[status("o1", "bo", "read", 30)]), copies=3),
        deliver("A", one("A1", statuses=[status("o1", "bo", "delivered", 20)]), copies=3),
        deliver("A", one("A1", statuses=[status("o1", "bo", "sent", 10)]), copies=3),
    ],
    [
        chat(
            "A1",
            "bo",
            0,
            {"direction": "out", "type": "text", "preview": "Yes: reply with the new one."},
            window(0),
            [
                {
                    "wamid": "${o:o1}",
                    "direction": "out",
                    "type": "text",
                    "text": "Yes: reply with the new one.",
                    "status": "read",
                    "reactions": [],
                    "edited": False,
                    "revoked": False,
                },
                inbound("m1", "bo", 0, "Can I change my address?"),
            ],
            "Bo Lindqvist",
        )
    ],
    [contact("A", "bo", "Bo Lindqvist")],
)

# 2b. statuses before their message ----------------------------------------------------------------------------
write(
    "statuses_before_their_message",
    "WhatsApp has accepted the agent's answer, but conversation has not heard of it yet (outbound is frozen "
    "before it reports the wamid) when the answer's statuses arrive, in reverse order: they are kept, nothing "
    "is applied, and once the answer appears it ends read.",
    [
        deliver("A", one("A1", [who("cy", "Cy")], [text("cy", "m1", 0, "Where is my parcel?")]), via="simulator"),
        {"read": {"number": "A1", "customer": "c:cy"}, "after": ["${w:m1}"]},
        {"send": {"number": "A1", "customer": "c:cy", "text": "On its way.", "as": "o1", "hold_answer": True}},
        deliver("A", one("A1", statuses=[status("o1", "cy", "read", 30)]), copies=2),
        deliver("A", one("A1", statuses=[status("o1", "cy", "delivered", 20)])),
        deliver("A", one("A1", statuses=[status("o1", "cy", "sent", 10)])),
        {"unsent": "o1"},
        {"release": "outbound"},
    ],
    [
        chat(
            "A1",
            "cy",
            0,
            {"direction": "out", "type": "text", "preview": "On its way."},
            window(0),
            [
                {
                    "wamid": "${o:o1}",
                    "direction": "out",
                    "type": "text",
                    "text": "On its way.",
                    "status": "read",
                    "reactions": [],
                    "edited": False,
                    "revoked": False,
                },
                inbound("m1", "cy", 0, "Where is my parcel?"),
            ],
            "Cy",
        )
    ],
    [contact("A", "cy", "Cy")],
)

# 3. one POST across numbers and tenants -----------------------------------------------------------------------
cam_a1_late = text("cam", "m1", 8, "Second, but listed first")
cam_a1_early = text("cam", "m2", 2, "First, but listed second")
dee_a1 = text("dee", "m3", 4, "Hello from Dee")
cam_a2 = text("cam", "m4", 6, "Writing to your other number")
cam_b1 = text("cam", "m5", 3, "Writing to another business")
eli_b1 = text("eli", "m6", 7, "Hello B")
dee_a1_again = text("dee", "m7", 5, "Dee again, in a second change")
batch_a = body(
    entry(
        "A1",
        change(
            "A1", contacts=[who("dee", "Dee"), who("cam", "Cam Okafor")], messages=[cam_a1_late, dee_a1, cam_a1_early]
        ),
        change("A1", contacts=[who("dee", "Dee")], messages=[dee_a1_again]),
    ),
    entry("A2", change("A2", contacts=[who("cam", "Cam Okafor")], messages=[cam_a2])),
)
batch_b = body(
    entry("B1", change("B1", contacts=[who("eli", "Eli"), who("cam", "Cameron O.")], messages=[eli_b1, cam_b1]))
)
write(
    "batch_across_numbers_and_tenants",
    "One POST with two entries (A's two numbers), three changes (two for one number) and five messages (one "
    "customer writes to both numbers; contacts listed out of order; messages listed out of timestamp order), "
    "delivered twice, and a POST for tenant B (on its own Meta app) where the same customer writes too: a chat "
    "per number, a contact per tenant, each with its own name.",
    [deliver("A", batch_a), deliver("B", batch_b), deliver("A", batch_a)],
    [
        chat(
            "A1",
            "cam",
            2,
            {"direction": "in", "type": "text", "preview": "Second, but listed first"},
            window(8),
            [inbound("m1", "cam", 8, "Second, but listed first"), inbound("m2", "cam", 2, "First, but listed second")],
            "Cam Okafor",
        ),
        chat(
            "A1",
            "dee",
            2,
            {"direction": "in", "type": "text", "preview": "Dee again, in a second change"},
            window(5),
            [inbound("m7", "dee", 5, "Dee again, in a second change"), inbound("m3", "dee", 4, "Hello from Dee")],
            "Dee",
        ),
        chat(
            "A2",
            "cam",
            1,
            {"direction": "in", "type": "text", "preview": "Writing to your other number"},
            window(6),
            [inbound("m4", "cam", 6, "Writing to your other number")],
            "Cam Okafor",
        ),
        chat(
            "B1",
            "cam",
            1,
            {"direction": "in", "type": "text", "preview": "Writing to another business"},
            window(3),
            [inbound("m5", "cam", 3, "Writing to another business")],
            "Cameron O.",
        ),
        chat(
            "B1",
            "eli",
            1,
            {"direction": "in", "type": "text", "preview": "Hello B"},
            window(7),
            [inbound("m6", "eli", 7, "Hello B")],
            "Eli",
        ),
    ],
    [
        contact("A", "cam", "Cam Okafor"),
        contact("A", "dee", "Dee"),
        contact("B", "cam", "Cameron O."),
        contact("B", "eli", "Eli"),
    ],
)

# 3b. an entry of another app's number ----------------------------------------------------------------------
write(
    "foreign_entry",
    "A POST signed by tenant A's app carries an entry of its own number and one of tenant B's (B is on another "
    "app): A's entry is routed, B's is archived and never routed (B sees no chat and no contact), and the POST "
    "is still answered 200.",
    [
        deliver(
            "A",
            body(
                entry("A1", change("A1", contacts=[who("nia", "Nia")], messages=[text("nia", "m1", 0, "For A")])),
                entry(
                    "B1", change("B1", contacts=[who("nia", "Nia")], messages=[text("nia", "m2", 1, "Forged for B")])
                ),
            ),
        )
    ],
    [
        chat(
            "A1",
            "nia",
            1,
            {"direction": "in", "type": "text", "preview": "For A"},
            window(0),
            [inbound("m1", "nia", 0, "For A")],
            "Nia",
        )
    ],
    [contact("A", "nia", "Nia")],
    absent_contacts=[{"tenant": "B", "customer": "c:nia"}],
)


# 4. reactions ---------------------------------------------------------------------------------------------------
def reaction(customer, wamid, t, target, emoji):
    obj = {"message_id": f"${{w:{target}}}"}
    if emoji is not None:
        obj["emoji"] = emoji
    return msg(customer, wamid, t, "reaction", obj)


fay = [who("fay", "Fay")]
thumbs = one("A1", fay, [reaction("fay", "r1", 10, "m1", "\U0001f44d")])
write(
    "reactions",
    'Reactions added, replaced and removed (with "emoji": "" and with the emoji omitted); a replaced reaction '
    "redelivered late does not come back; reactions add no timeline item, no unread count, no preview, and do "
    "not refresh the window.",
    [
        deliver(
            "A",
            one(
                "A1",
                fay,
                [
                    text("fay", "m1", 0, "Is the blue one in stock?"),
                    text("fay", "m2", 1, "Size M please"),
                    text("fay", "m3", 2, "Thanks!"),
                ],
            ),
        ),
        deliver("A", thumbs),
        deliver("A", one("A1", fay, [reaction("fay", "r2", 11, "m1", "\u2764\ufe0f")]), copies=2),
        deliver("A", thumbs),
        deliver("A", one("A1", fay, [reaction("fay", "r3", 12, "m2", "\U0001f602")])),
        deliver("A", one("A1", fay, [reaction("fay", "r4", 13, "m2", "")])),
        deliver("A", one("A1", fay, [reaction("fay", "r5", 14, "m3", "\U0001f389")])),
        deliver("A", one("A1", fay, [reaction("fay", "r6", 15, "m3", None)])),
    ],
    [
        chat(
            "A1",
            "fay",
            3,
            {"direction": "in", "type": "text", "preview": "Thanks!"},
            window(2),
            [
                inbound("m3", "fay", 2, "Thanks!"),
                inbound("m2", "fay", 1, "Size M please"),
                inbound("m1", "fay", 0, "Is the blue one in stock?", reactions=["\u2764\ufe0f"]),
            ],
            "Fay",
        )
    ],
    [contact("A", "fay", "Fay")],
)


# 5. edits and revokes -----------------------------------------------------------------------------------------
def edit(customer, wamid, t, original, new_text):
    return msg(
        customer,
        wamid,
        t,
        "edit",
        {"original_message_id": f"${{w:{original}}}", "message": {"type": "text", "text": {"body": new_text}}},
    )


def revoke(customer, wamid, t, original):
    return msg(customer, wamid, t, "revoke", {"original_message_id": f"${{w:{original}}}"})


gus = [who("gus", "Gus")]
hal = [who("hal", "Hal")]
write(
    "edits_and_revokes",
    "A customer edits one message and deletes another (after the agent read them), each delivered twice; another "
    "customer's edit arrives before the message it edits. The edit shows on the original (marked edited, the "
    "earlier text kept in its history), the revoked message is marked revoked with its content hidden; neither "
    "adds a timeline item, an unread count, a preview, or refreshes the window.",
    [
        deliver(
            "A",
            one(
                "A1",
                gus,
                [
                    text("gus", "m1", 0, "I want 2 shirts"),
                    text("gus", "m2", 1, "And a red hat"),
                    text("gus", "m3", 2, "Ship to Lisbon"),
                ],
            ),
        ),
        {"read": {"number": "A1", "customer": "c:gus"}, "after": ["${w:m1}", "${w:m2}", "${w:m3}"]},
        deliver("A", one("A1", gus, [edit("gus", "e1", 20, "m1", "I want 3 shirts")]), copies=2),
        deliver("A", one("A1", gus, [revoke("gus", "e2", 30, "m2")]), copies=2),
        deliver("A", one("A1", hal, [edit("hal", "e3", 40, "m4", "Pick-up at 5 pm, not 4")])),
        deliver("A", one("A1", hal, [text("hal", "m4", 3, "Pick-up at 4 pm")])),
        deliver("A", one("A1", hal, [text("hal", "m5", 4, "Is that fine?")])),
    ],
    [
        chat(
            "A1",
            "gus",
            0,
            {"direction": "in", "type": "text", "preview": "Ship to Lisbon"},
            window(2),
            [
                inbound("m3", "gus", 2, "Ship to Lisbon"),
                {
                    "wamid": "${w:m2}",
                    "direction": "in",
                    "revoked": True,
                    "edited": False,
                    "reactions": [],
                    "hidden_text": "And a red hat",
                },
                inbound("m1", "gus", 0, "I want 3 shirts", edited=True, history=["I want 2 shirts"]),
            ],
            "Gus",
        ),
        chat(
            "A1",
            "hal",
            2,
            {"direction": "in", "type": "text", "preview": "Is that fine?"},
            window(4),
            [
                inbound("m5", "hal", 4, "Is that fine?"),
                inbound("m4", "hal", 3, "Pick-up at 5 pm, not 4", edited=True, history=["Pick-up at 4 pm"]),
            ],
            "Hal",
        ),
    ],
    [contact("A", "gus", "Gus"), contact("A", "hal", "Hal")],
)

# 6. unknown future types --------------------------------------------------------------------------------------
ivy = [who("ivy", "Ivy")]
write(
    "unknown_types",
    "Types we do not know (a future `poll_v9`, Meta's `unsupported` with 131051) are still customer messages: "
    "stored with their raw object, counted unread, shown in the list, and they refresh the 24-hour window.",
    [
        deliver("A", one("A1", ivy, [text("ivy", "m1", 0, "Hello")])),
        deliver(
            "A",
            one(
                "A1",
                ivy,
                [
                    msg(
                        "ivy",
                        "m2",
                        30,
                        "unsupported",
                        {"type": "poll"},
                        errors=[
                            {
                                "code": 131051,
                                "title": "Message type unknown",
                                "message": "Message type unknown",
                                "error_data": {"details": "Message type is currently not supported."},
                            }
                        ],
                    )
                ],
            ),
        ),
        deliver(
            "A",
            one(
                "A1",
                ivy,
                [
                    msg(
                        "ivy",
                        "m3",
                        60,
                        "poll_v9",
                        {"question": "Which colour?", "options": ["red", "blue"], "multi": False},
                    )
                ],
            ),
            copies=2,
        ),
    ],
    [
        chat(
            "A1",
            "ivy",
            3,
            {"direction": "in", "type": "*unknown:poll_v9"},
            window(60),
            [
                {
                    "wamid": "${w:m3}",
                    "direction": "in",
                    "type": "*unknown:poll_v9",
                    "reactions": [],
                    "edited": False,
                    "revoked": False,
                    "raw_contains": "Which colour?",
                },
                {
                    "wamid": "${w:m2}",
                    "direction": "in",
                    "type": "*unknown:poll",
                    "reactions": [],
                    "edited": False,
                    "revoked": False,
                },
                inbound("m1", "ivy", 0, "Hello"),
            ],
            "Ivy",
        )
    ],
    [contact("A", "ivy", "Ivy")],
)

# 7. long Unicode bodies ---------------------------------------------------------------------------------------
RLM, LRM, LS, PS, RLO, PDF = "\u200f", "\u200e", "\u2028", "\u2029", "\u202e", "\u202c"
piece = (
    "Hola \u00e9\u00e8 "
    + RLM
    + "\u0645\u0631\u062d\u0628\u0627 \u0628\u0643"
    + LRM
    + " "
    + LS
    + "\u05e9\u05dc\u05d5\u05dd "
    + RLO
    + "abc"
    + PDF
    + " \u4f60\u597d \U0001f600\U0001f469\u200d\U0001f4bb "
    + "e\u0301 "
    + PS
    + ' "quoted" \\ / < % @ \t'
)
long1 = (piece * (4096 // len(piece) + 1))[:4096]
long2 = (RLM + "\u0627" + LS) * (4096 // 3) + "\u0627" * (4096 - 3 * (4096 // 3))
assert len(long1) == 4096
assert len(long2) == 4096
name = RLM + "\u0645\u0631\u064a\u0645 " + LRM + "(Maryam)" + LS + "\U0001f338"
jo = [{"profile": {"name": name}, "wa_id": "${c:jo}"}]
write(
    "long_unicode_bodies",
    "Two 4,096-character bodies mixing scripts, RTL and LRM marks, U+202E overrides, U+2028/U+2029, emoji "
    "(surrogate pairs on the wire), combining marks, quotes and backslashes: one sent Meta's way (ASCII with "
    "\\u escapes), one as raw UTF-8; both signed over the exact bytes and stored exactly, the profile name too.",
    [
        deliver("A", one("A1", jo, [text("jo", "m1", 0, long1)])),
        deliver("A", one("A1", jo, [text("jo", "m2", 1, long2)]), encoding="utf8"),
    ],
    [
        chat(
            "A1",
            "jo",
            2,
            {"direction": "in", "type": "text", "preview_prefix_of": long2},
            window(1),
            [inbound("m2", "jo", 1, long2), inbound("m1", "jo", 0, long1)],
            name,
        )
    ],
    [contact("A", "jo", name)],
)


# 8. BSUID-only customers ------------------------------------------------------------------------------------------
def bsuid_who(u, name, username):
    return {"profile": {"name": name, "username": username}, "wa_id": "", "user_id": f"${{u:{u}}}"}


def bsuid_text(u, wamid, t, body_):
    return {
        "from": "",
        "from_user_id": f"${{u:{u}}}",
        "id": f"${{w:{wamid}}}",
        "timestamp": f"${{t:{t}}}",
        "type": "text",
        "text": {"body": body_},
    }


def bsuid_inbound(wamid, body_):
    return {
        "wamid": f"${{w:{wamid}}}",
        "direction": "in",
        "type": "text",
        "text": body_,
        "reactions": [],
        "edited": False,
        "revoked": False,
    }


kai = {"profile": {"name": "Kai", "username": "kai.m"}, "wa_id": "${c:kai}", "user_id": "${u:kai}"}
write(
    "bsuid_only_customers",
    "Two customers known only by their business-scoped user ids (empty `from` and `wa_id`) write the same "
    "number in one POST and again: two chats, two contacts, nothing shared. A third writes by phone first, then "
    "with both ids: one chat and one contact, linked.",
    [
        deliver(
            "A",
            one(
                "A1",
                [bsuid_who("lea", "Lea", "lea.k"), bsuid_who("max", "Max", "max.r")],
                [bsuid_text("lea", "m1", 0, "Hi, Lea here"), bsuid_text("max", "m2", 1, "Hi, Max here")],
            ),
        ),
        deliver("A", one("A1", [bsuid_who("max", "Max", "max.r")], [bsuid_text("max", "m3", 2, "Max again")])),
        deliver("A", one("A1", [who("kai", "Kai")], [text("kai", "m4", 3, "By phone")])),
        deliver(
            "A",
            one(
                "A1",
                [kai],
                [
                    {
                        "from": "${c:kai}",
                        "from_user_id": "${u:kai}",
                        "id": "${w:m5}",
                        "timestamp": "${t:4}",
                        "type": "text",
                        "text": {"body": "With both ids"},
                    }
                ],
            ),
        ),
    ],
    [
        {
            "number": "A1",
            "customer": "u:lea",
            "unread_count": 1,
            "display_name": "Lea",
            "window": window(0),
            "last_message": {"direction": "in", "type": "text", "preview": "Hi, Lea here"},
            "timeline": [bsuid_inbound("m1", "Hi, Lea here")],
        },
        {
            "number": "A1",
            "customer": "u:max",
            "unread_count": 2,
            "display_name": "Max",
            "window": window(2),
            "last_message": {"direction": "in", "type": "text", "preview": "Max again"},
            "timeline": [bsuid_inbound("m3", "Max again"), bsuid_inbound("m2", "Hi, Max here")],
        },
        {
            "number": "A1",
            "customer": "c:kai",
            "unread_count": 2,
            "display_name": "Kai",
            "window": window(4),
            "last_message": {"direction": "in", "type": "text", "preview": "With both ids"},
            "timeline": [bsuid_inbound("m5", "With both ids"), bsuid_inbound("m4", "By phone")],
        },
    ],
    [
        {
            "tenant": "A",
            "customer": "u:lea",
            "profile_name": "Lea",
            "name": None,
            "deleted": False,
            "blacklisted": False,
            "wa_id": "*no-phone",
            "phone_e164": "*no-phone",
        },
        {
            "tenant": "A",
            "customer": "u:max",
            "profile_name": "Max",
            "name": None,
            "deleted": False,
            "blacklisted": False,
            "wa_id": "*no-phone",
            "phone_e164": "*no-phone",
        },
        contact("A", "kai", "Kai") | {"customer": "c:kai", "linked": "u:kai"},
    ],
)
print("ok")
