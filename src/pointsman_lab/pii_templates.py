"""Sentence templates for the PII training and validation data (``pii_train.py generate``).

Placeholders are ``{{name}}`` as in presidio-evaluator's templates; each one becomes one gold
span of the type :data:`pointsman_lab.pii_train.PLACEHOLDER_TYPES` gives it. ``TRAIN`` and
``VALIDATION`` share no template: the validation figures measure sentences the model has not
seen the shape of. They add what the presidio templates have little of: address fragments (a
flat number, a bare postcode, a PO box), organisations, dates and times in many formats, and
sentences with no entity at all.
"""

from __future__ import annotations

import random

TRAIN: tuple[str, ...] = (
    # addresses and fragments
    "Please ship the parcel to {{building_number}} {{street_name}}, {{secondary_address}}, {{city}} {{postcode}}.",
    "Our new office is at {{address}}.",
    "Deliver to {{secondary_address}}, {{building_number}} {{street_name}}.",
    "The flat is {{secondary_address}} in the building on {{street_name}}.",
    "Postcode {{postcode}}, please.",
    "Send the forms to PO Box {{building_number}}, {{city}}, {{state_abbr}} {{zipcode}}.",
    "I live in {{city}}, {{state}} {{zipcode}}.",
    "My postal code is {{postcode}} and I am in {{city}}.",
    "Can you check if {{zipcode}} is in your delivery area?",
    "Moved from {{city}} to {{city}} last month, new place is {{building_number}} {{street_name}}.",
    "Address: {{building_number}} {{street_name}}\\n{{secondary_address}}\\n{{city}}, {{country}}",
    "{{person}}, {{address}}",
    "The meeting point is the corner of {{street_name}} and {{street_name}} in {{city}}.",
    "Is there parking near {{building_number}} {{street_name}}?",
    "Ring the bell at {{secondary_address}}, it is on the third floor.",
    "We stayed two weeks in {{city}}, {{country}}.",
    "What is the weather like in {{city}} this weekend?",
    "Flights from {{city}} to {{city}} on {{date_time}}?",
    "The shipment left the warehouse in {{city}}, {{state}}.",
    "Return address: {{organization}}, {{address}}",
    "Please correct the apartment number to {{secondary_address}}.",
    "Her mailing address is {{address}}; phone {{phone_number}}.",
    # people
    "{{prefix}} {{last_name}} will call you back tomorrow.",
    "Please add {{first_name}} {{last_name}} to the guest list.",
    "Forward this to {{person}} and {{person}}.",
    "Dear {{first_name}}, thanks for your order.",
    "My manager, {{person}}, approved the expense on {{date_time}}.",
    "Is {{first_name}} available for a call on {{day_of_week}}?",
    "{{person}} ({{email}}) asked about the invoice.",
    "Write a birthday poem for my friend {{first_name}}.",
    "Summarize this email from {{person}}: the meeting moved to {{day_of_week}}.",
    "Translate to French: {{first_name}} lives in {{city}} and works for {{organization}}.",
    # organisations
    "I work at {{organization}} as an engineer.",
    "{{organization}} announced record profits in {{year}}.",
    "Draft a cover letter for a job at {{organization}} in {{city}}.",
    "How do I cancel my subscription with {{organization}}?",
    "The contract between {{organization}} and {{organization}} was signed on {{date_time}}.",
    "{{person}} joined {{organization}} in {{year}}.",
    "Compare {{organization}} and {{organization}} for a small business loan.",
    # dates and times
    "My appointment is on {{date_time}}.",
    "I was born on {{date_of_birth}} in {{city}}.",
    "The invoice is due {{date_time}}.",
    "Book a table for four on {{day_of_week}} at {{time}}.",
    "We have been customers since {{year}}.",
    "The deadline moved from {{date_time}} to {{date_time}}.",
    "Remind me at {{time}} on {{date_time}}.",
    "Date of birth: {{date_of_birth}}",
    "The store closes at {{time}} on {{day_of_week}}s.",
    # mixed, with pattern types the model must leave alone
    "Call {{person}} at {{phone_number}} before {{time}}.",
    "Card {{credit_card_number}} belongs to {{person}}, billing address {{address}}.",
    "Email {{email}} if {{organization}} has not replied by {{date_time}}.",
    "My IBAN is {{iban}} and the account is in the name of {{person}}.",
    # no entity
    "What is the capital of a country with the largest population?",
    "Explain how a street address is validated by a postal service.",
    "Write a Python function that parses a date string.",
    "How many apartments does a typical building have?",
    "Give me three tips to organise my week.",
    "Which company makes the best laptops?",
)

VALIDATION: tuple[str, ...] = (
    "Could you update my address to {{building_number}} {{street_name}} {{secondary_address}}, {{city}}?",
    "The package is waiting at {{address}}.",
    "Unit {{building_number}}, {{street_name}}, {{city}} {{postcode}}",
    "I'm in {{secondary_address}}; the entrance is on {{street_name}}.",
    "Zip {{zipcode}}.",
    "Visiting {{city}} and {{country}} in {{year}}, any hotel ideas?",
    "{{first_name}} {{last_name}} moved to {{city}} after college.",
    "Ask {{prefix}} {{last_name}} from {{organization}} to sign it.",
    "Hi {{first_name}}! See you on {{day_of_week}}.",
    "Send the report to {{person}} at {{organization}} by {{date_time}}.",
    "{{organization}} opened a branch in {{city}} on {{date_time}}.",
    "Interview at {{organization}} on {{date_time}} at {{time}}.",
    "My son {{first_name}} was born on {{date_of_birth}}.",
    "Note from {{person}}: rent for {{secondary_address}} is due {{date_time}}.",
    "Please verify {{person}}, {{address}}, phone {{phone_number}}.",
    "Customer: {{person}}\\nStreet: {{building_number}} {{street_name}}\\nCity: {{city}}\\nPostcode: {{postcode}}",
    "Who founded {{organization}}?",
    "How do I get from {{street_name}} to the station in {{city}}?",
    "Is {{city}} far from {{city}}?",
    "Our team at {{organization}} meets every {{day_of_week}} at {{time}}.",
    "The lease on {{building_number}} {{street_name}} ends in {{year}}.",
    "Write a thank-you note to {{first_name}} for the gift.",
    "List three museums worth visiting.",
    "Convert this timestamp to a readable date.",
)

# Training sentences composed from parts (:func:`compose`): thousands of contexts instead of a
# few dozen, so the head learns what a name, place or date looks like rather than templates.
_PERSON = (
    "{{person}}",
    "{{first_name}}",
    "{{first_name}} {{last_name}}",
    "{{prefix}} {{last_name}}",
    "{{prefix}} {{person}}",
    "my colleague {{person}}",
    "my friend {{first_name}}",
    "my wife {{first_name}}",
    "our client {{person}}",
    "patient {{person}}",
    "{{last_name}}",
    "Mr. {{last_name}}",
    "Ms. {{last_name}}",
)
_PLACE = (
    "in {{city}}",
    "in {{city}}, {{country}}",
    "in {{city}}, {{state_abbr}}",
    "to {{country}}",
    "from {{city}}",
    "near {{city}}",
    "at {{address}}",
    "at {{building_number}} {{street_name}}",
    "to {{building_number}} {{street_name}}, {{city}}",
    "on {{street_name}}",
    "at {{street_name}} in {{city}}",
    "to {{secondary_address}}, {{building_number}} {{street_name}}",
    "to {{address}}",
    "in {{state}}",
    "at {{building_number}} {{street_name}} {{secondary_address}}, {{city}} {{postcode}}",
    "in {{city}} {{postcode}}",
    "to postcode {{postcode}}",
    "in zip code {{zipcode}}",
    "to {{secondary_address}}",
    "at PO Box {{building_number}}, {{city}}",
)
_ORG = (
    "at {{organization}}",
    "for {{organization}}",
    "with {{organization}}",
    "from {{organization}}",
    "by {{organization}}",
    "at {{organization}} in {{city}}",
)
_DATE = (
    "on {{date_time}}",
    "by {{date_time}}",
    "since {{year}}",
    "every {{day_of_week}}",
    "at {{time}}",
    "before {{date_time}}",
    "in {{year}}",
    "on {{day_of_week}}",
    "on {{day_of_week}} at {{time}}",
    "until {{date_time}}",
    "from {{date_time}} to {{date_time}}",
    "on {{date_of_birth}}",
)
_OTHER = (
    "my card {{credit_card_number}}",
    "email {{email}}",
    "phone {{phone_number}}",
    "account {{iban}}",
    "aged {{age}}",
    "the {{nationality}} embassy",
    "as a {{job}}",
)
_FRAMES = (
    "{P} is moving {L} {D}",
    "please send the documents {L}",
    "{P} works {O}",
    "I will meet {P} {L} {D}",
    "{P} was born {D} {L}",
    "{P} from {ORGNAME} called {D}",
    "the order for {P} ships {L}",
    "can {P} reschedule the call {D}",
    "I lived {L} until {YEAR}",
    "book a hotel {L} {D}",
    "{P} joined {ORGNAME} {D}",
    "the delivery address is {ADDR}",
    "{P} signed the lease {L}",
    "write an email to {P} about the meeting {D}",
    "the conference {O} takes place {L} {D}",
    "{P} and {P} are flying {L} {D}",
    "update the record for {P}: {OTHER}",
    "our office moved {L}",
    "{ORGNAME} hired {P} {D}",
    "ask {P} whether {ORGNAME} pays {D}",
    "the package was left {L}",
    "my address changed {L}",
    "is there a pharmacy {L}",
    "{P} ({OTHER}) lives {L}",
    "remind {P} to call {ORGNAME} {D}",
    "the invoice from {ORGNAME} is due {D}",
    "I have an appointment with {P} {D}",
    "tell {P} the meeting {L} is cancelled",
    "{P} studied at the University of {{city}}",
    "summarise the report by {P} {O}",
    "how far is it from {{city}} to {{city}}",
    "translate: {P} visited {{country}} {D}",
    "{P} was treated {L} {D}",
    "the flight {D} leaves from {{city}}",
)
_FILLERS = (
    "what is the best way to learn a language",
    "explain the difference between a list and a tuple",
    "the report is attached",
    "thanks in advance",
    "let me know if anything changes",
    "where is the nearest station",
    "when does the store open",
    "write a short poem about autumn",
    "which company has the best support",
    "date and time formats differ by country",
    "the unit price went up",
    "what street food should I try",
    "how do I format a date in Python",
)
_OPENERS = (
    "",
    "",
    "",
    "Hi, ",
    "Hello! ",
    "Please note: ",
    "Quick question: ",
    "FYI ",
    "Urgent: ",
    "Dear team, ",
    "Reminder: ",
    "Hey, ",
    "Thanks. ",
    "Note: ",
)
_JOINS = (". ", ", and ", "; ", " - ", ". Also, ", "\\n")


def compose(rng: random.Random) -> str:
    """One training template: an opener and one to three clauses of people, places, dates."""
    parts = []
    for _ in range(rng.choice((1, 1, 2, 2, 3))):
        if rng.random() < 0.12:
            parts.append(rng.choice(_FILLERS))
            continue
        frame = rng.choice(_FRAMES)
        for key, options in (
            ("{P}", _PERSON),
            ("{L}", _PLACE),
            ("{O}", _ORG),
            ("{D}", _DATE),
            ("{OTHER}", _OTHER),
        ):
            while key in frame:
                frame = frame.replace(key, rng.choice(options), 1)
        frame = frame.replace("{ORGNAME}", "{{organization}}").replace("{YEAR}", "{{year}}")
        frame = frame.replace("{ADDR}", rng.choice(_PLACE).split(" ", 1)[1])
        parts.append(frame)
    text = parts[0]
    for p in parts[1:]:
        text += rng.choice(_JOINS) + p
    text = rng.choice(_OPENERS) + text[0].upper() + text[1:]
    return text + rng.choice((".", "?", "!", "", "."))
