"""Generate graftline's demo dataset: synthetic customer-support tickets in two product domains.

The data is synthetic and was written for graftline; it is not taken from any public dataset.
Each file holds short messages (one or two sentences) that customers send to a shop, labelled
for ticket routing with the same four labels in both domains, 90 rows per label per file:

    billing   charged twice, refund status, invoices, wrong price, discount code, failed payment
    delivery  late or lost parcels, wrong address or door, tracking, damage in transit
    defect    the product is broken, faulty or stops working
    praise    happy customers, thanks to support, recommendations

    electronics.csv  headphones, laptops, phones, chargers, TVs, routers, cameras, ...
    home.csv         blenders, sofas, mattresses, cookware, vacuum cleaners, lamps, ...
    home-unlabeled.csv  more home-goods messages, text only (no label column): the unlabeled texts
                     of a domain the model will serve, for domain adaptation (`--target`)

Sentence frames are shared across domains, while product nouns, problems and praise are
domain-specific, so the pair shows cross-domain transfer (train on electronics, test on home).
About 10% of rows deliberately borrow another label's words (a defect that mentions a refund,
praise that says the parcel arrived early) while their main intent stays clear.

Regenerate (deterministic, stdlib only) from the repository root:

    python tasks/data/demo_data/make_demo_data.py
"""

import csv
import itertools
import random
from pathlib import Path

SEED = 20240611
ROWS_PER_LABEL = 90
LABELS = ("billing", "delivery", "defect", "praise")
OUT_DIR = Path(__file__).resolve().parent

# item -> (usual top price, "problem|problem|...", "praise|praise|..."); phrases read after "my <item>".
ITEMS = {
    "electronics": {
        "laptop": (
            1400,
            "flickers every time I open the lid|won't boot past the logo screen|has a fan that roars even when idle",
            "boots up in seconds|lasts a full workday on one charge",
        ),
        "phone": (
            1100,
            "drains from full to empty by lunchtime|ignores half my taps on the touchscreen|restarts whenever I open the camera",
            "takes stunning photos in low light|feels fast and smooth",
        ),
        "headset": (
            350,
            "cuts out in the left ear|crackles at anything above half volume|won't pair with anything anymore",
            "sounds crisp and the noise cancelling is superb|stays comfortable through hours of calls",
        ),
        "charger": (
            45,
            "gets too hot to touch after ten minutes|only charges if I hold the cable at an angle|makes a high-pitched whine",
            "charges my phone in under an hour|is tiny and still really fast",
        ),
        "smartwatch": (
            450,
            "loses its bluetooth connection every hour|has a screen that cracks at the slightest knock|no longer tracks my heart rate",
            "tracks my runs perfectly|goes almost a week between charges",
        ),
        "TV": (
            1800,
            "has a row of dead pixels along the bottom|turns itself off in the middle of shows|has no sound over HDMI",
            "has an incredibly sharp picture|makes movie nights feel like the cinema",
        ),
        "router": (
            300,
            "drops the wifi every evening|keeps rebooting on its own|shows a blinking red light and no internet",
            "covers the whole house with strong wifi|keeps our video calls stable",
        ),
        "camera": (
            1500,
            "shows a lens error every time I switch it on|has autofocus that hunts and never locks|keeps corrupting the memory card",
            "takes beautifully sharp photos|focuses quickly even on moving kids",
        ),
        "power bank": (
            70,
            "won't hold a charge overnight|has swollen so the case is bulging",
            "charges my phone three times over|fits easily in my jacket pocket",
        ),
        "tablet": (
            900,
            "has ghost touches all over the screen|won't charge past forty percent",
            "is perfect for reading and sketching|has a bright, beautiful display",
        ),
        "bluetooth speaker": (
            200,
            "distorts as soon as the bass kicks in|won't turn on even after charging all night",
            "is loud and clear for its size|survives pool parties without a scratch",
        ),
        "gaming console": (
            550,
            "freezes in the middle of every game|makes a grinding noise when reading discs",
            "loads games super fast|stays quiet even in long sessions",
        ),
        "monitor": (
            700,
            "has backlight bleed in every corner|keeps going black for a second at a time",
            "has gorgeous, accurate colours|makes my desk setup look amazing",
        ),
        "keyboard": (
            180,
            "repeats letters on its own|has a backlight that no longer turns on",
            "has a lovely typing feel|switches between my devices instantly",
        ),
        "wireless mouse": (
            90,
            "has a scroll wheel that jumps around|double-clicks when I click once",
            "feels great in the hand|lasts months on one battery",
        ),
        "e-reader": (
            250,
            "is frozen on the cover page|won't sync my library anymore",
            "is so easy on the eyes|lasts weeks on one charge",
        ),
        "soundbar": (
            600,
            "loses audio sync with the TV|has a subwoofer that keeps disconnecting",
            "fills our living room with rich sound|makes dialogue so much clearer",
        ),
        "webcam": (
            160,
            "shows a flickering purple image|disconnects during every video call",
            "makes me look sharp on video calls|just works the moment I plug it in",
        ),
        "printer": (
            350,
            "jams on every second page|says the ink is empty when the cartridge is brand new",
            "prints fast and quietly|connects to the wifi without any fuss",
        ),
        "fitness tracker": (
            180,
            "no longer counts my steps|has a strap clasp that keeps popping open",
            "motivates me to move every day|is light enough to forget I'm wearing it",
        ),
    },
    "home": {
        "blender": (
            180,
            "leaks from the base of the jug|smells like burning when I run it|stalls on a handful of ice",
            "crushes ice in seconds|makes the smoothest smoothies",
        ),
        "sofa": (
            1900,
            "has a cushion seam that is splitting|creaks loudly whenever someone sits down|has a leg that is cracked and wobbly",
            "is so comfy we nap on it daily|looks stunning in our living room",
        ),
        "mattress": (
            1400,
            "sags in the middle after a month|has a spring poking through the top",
            "gives me the best sleep in years|is firm but still soft on top",
        ),
        "frying pan": (
            90,
            "has a non-stick coating that is peeling off|is warped and rocks on the hob",
            "cooks eggs without sticking at all|heats evenly and cleans up easily",
        ),
        "vacuum cleaner": (
            450,
            "has lost almost all its suction|makes a loud rattling noise|has a brush roll that won't spin",
            "picks up every bit of pet hair|is light enough to carry upstairs",
        ),
        "robot vacuum": (
            700,
            "gets stuck under the same chair every day|won't go back to its dock",
            "keeps the floors spotless|maps every room perfectly",
        ),
        "floor lamp": (
            220,
            "flickers constantly|has a switch that sparks when I turn it on",
            "gives off a lovely warm light|looks elegant in the corner",
        ),
        "duvet set": (
            160,
            "has seams coming apart after one wash|sheds fluff all over the bedroom",
            "is soft and keeps us warm|washes beautifully without fading",
        ),
        "coffee maker": (
            400,
            "leaks water all over the counter|won't heat past lukewarm|shows a descale error every morning",
            "makes a great cup every morning|is quick and easy to clean",
        ),
        "kettle": (
            110,
            "leaks from the bottom seam|doesn't switch off when it boils",
            "boils water super quickly|is quiet and looks lovely",
        ),
        "toaster": (
            120,
            "burns one side and leaves the other pale|won't stay down",
            "toasts perfectly evenly|handles thick bagels with ease",
        ),
        "stand mixer": (
            600,
            "wobbles across the counter at low speed|has a bowl that won't lock in",
            "kneads dough like a dream|is powerful and surprisingly quiet",
        ),
        "air fryer": (
            220,
            "has a basket coating that is flaking|smells of melting plastic",
            "makes the crispiest fries|cooks dinner in half the time",
        ),
        "dining table": (
            1300,
            "has a top that is cracking along the grain|wobbles no matter how I level it",
            "seats eight of us comfortably|has a gorgeous oak finish",
        ),
        "office chair": (
            500,
            "slowly sinks while I'm sitting on it|has a wheel that keeps falling off",
            "saves my back during long workdays|is comfortable and easy to adjust",
        ),
        "bookshelf": (
            350,
            "has shelves that bow under a few books|has pre-drilled holes in the wrong places",
            "holds all my books without sagging|looks great in the study",
        ),
        "rug": (
            600,
            "is shedding everywhere|has dye that bleeds when it gets damp",
            "is so soft underfoot|ties the whole room together",
        ),
        "cookware set": (
            450,
            "has handles that keep coming loose|has pots that rust after washing",
            "cooks beautifully on our induction hob|looks great hanging in the kitchen",
        ),
        "bed frame": (
            900,
            "squeaks with every movement|has a cracked slat in the middle",
            "is rock solid and silent|looks great in the bedroom",
        ),
        "slow cooker": (
            130,
            "has a lid that cracks when it heats up|never gets hot enough to cook",
            "makes the most tender stews|makes weeknight dinners so easy",
        ),
        "pillow": (
            90,
            "goes flat within a few hours|smells strongly of chemicals",
            "has fixed my neck pain|stays cool all night",
        ),
    },
}
# Other vocabulary that differs by domain ("issue" may name the item); SHARED is the same in both.
DOMAIN = {
    "electronics": {
        "addon": [
            "the extended warranty",
            "the accidental damage plan",
            "the data transfer service",
            "the cloud backup subscription",
            "the screen protector bundle",
        ],
        "code": ["TECH15", "GADGET10", "STUDENT20", "BACK2SCHOOL"],
        "room": ["home office", "living room", "kid's room", "studio"],
        "tried": [
            "restarting it",
            "doing a factory reset",
            "updating the software",
            "charging it overnight",
            "swapping the cable",
        ],
        "issue": [
            "the courier left my {item} at a parcel locker I never chose",
            "the box arrived with the tamper seal torn open",
            "the driver needed a signature but never even knocked",
            "only the cable arrived, not the {item} itself",
            "tracking has said 'label created' for a week",
            "the {item} box was left on the doorstep in the rain",
        ],
    },
    "home": {
        "addon": [
            "the assembly service",
            "the haul-away fee",
            "the fabric protection plan",
            "the white-glove delivery",
            "the old mattress recycling",
        ],
        "code": ["HOME15", "COZY10", "KITCHEN20", "NEWNEST"],
        "room": ["kitchen", "guest room", "living room", "holiday flat"],
        "tried": [
            "cleaning it thoroughly",
            "reading the manual again",
            "checking every part",
            "checking your FAQ",
            "giving it a few days",
        ],
        "issue": [
            "the freight crew never showed up in our delivery window",
            "the {item} was left on the driveway instead of brought inside",
            "the two-person delivery was one driver who couldn't lift it",
            "half the boxes for the {item} are missing",
            "the pallet was dropped at the wrong house",
            "the box was soaked and the {item} has water stains from the trip",
        ],
    },
}
SHARED = {
    "day": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"],
    "ago": ["last week", "two weeks ago", "on Monday", "a month ago", "ten days ago", "over a week ago", "yesterday"],
    "pay": ["credit card", "debit card", "PayPal account", "bank account", "Apple Pay"],
    "place": [
        "my neighbour's porch",
        "the wrong building",
        "a house two streets away",
        "the back gate",
        "the shop downstairs",
    ],
    "agent": ["Dana", "Luis", "Mei", "Ravi", "Sophie", "Ben"],
    "relative": ["mum", "brother", "sister", "dad", "best friend"],
    "name": ["Priya", "Tom", "Ana", "Marek", "Jo", "Sam", "Lena", "Kwame", "Yuki", "Omar"],
}
TEMPLATES = {
    "billing": [
        "Your site says my payment for the {item} is pending, but my bank says it went through on {day}.",
        "Paying for the {item} failed three times on my {pay}, but the money left my account anyway.",
        "I was charged twice for the {item} on order {order}. Please refund the duplicate payment.",
        "Refund still missing for the returned {item}.",
        "My {pay} was declined when I tried to buy the {item}, even though I have plenty of funds.",
        "The {item} dropped to ${amount2} a day after I bought it, can I get the difference back?",
        "I paid for the {item} with a gift card but the whole amount was taken from my {pay}.",
        "There's a ${amount} charge for a {item} on my statement, but I never ordered one.",
        "I was overcharged by ${small} for the {item} on order {order}, please correct it.",
        "I was promised a price match on the {item} and it still hasn't been credited.",
        "Why was I billed ${small} for {addon}? I never added it.",
        "I cancelled {addon} before the order shipped but was still charged for it.",
        "The refund for {addon} was only ${small}, not the full price.",
        "Store credit for the {item} I returned {ago} is not showing in my account.",
        "The bundle price for the {item} wasn't honoured at checkout.",
        "My refund for the {item} went to a card I closed, how do I get the money?",
        "I returned the {item} {ago} and still haven't seen the refund.",
        "The {code} promo should take 20% off the {item} but the cart ignores it.",
        "The invoice for my {item} has the wrong name and address on it.",
        "Can you tell me the status of my refund for the {item} (order {order})?",
        "Please remove the charge for {addon}, it was added by mistake.",
        "My discount code {code} wasn't applied to the {item} on order {order}.",
        "My card shows two charges of ${amount} for the same {item}.",
        "The instalment plan for my {item} charged the full ${amount} up front.",
        "The {item} was ${amount} at checkout but the listing said ${amount2}.",
        "You charged me for two units of the {item} but I only ordered one.",
        "Could you send me an invoice for the {item}? I need it for expenses.",
        "Can I get a VAT receipt for the {item}? The one you sent is blank.",
    ],
    "delivery": [
        "My {item} went to the wrong house and my neighbour brought it over already opened.",
        "My {item} has been stuck in customs for {n} days now.",
        "My {item} (order {order}) was supposed to arrive on {day} and it's still not here.",
        "Tracking for my {item} hasn't updated in {n} days.",
        "The courier says my address doesn't exist, but it's correct on the {item} order.",
        "I received someone else's parcel instead of my {item}.",
        "It's been {n} days since my {item} shipped and it's still sitting at the depot.",
        "The tracking link for my {item} just says 'not found'.",
        "The driver never rang the bell, just left a missed delivery card for my {item}.",
        "My {item} has been 'out for delivery' since {day}.",
        "I typed the wrong address for the {item}, can you change it before it ships?",
        "My {item} went to a pickup locker but I never got the code.",
        "The delivery window was 8 to 12 and nobody came, what happened to my {item}?",
        "When will my {item} arrive? The estimated date was {day}.",
        "The package with my {item} was marked as delivered but I never received it.",
        "Your courier threw the box with my {item} over the fence.",
        "Could you redirect my {item} to my work address? I won't be home on {day}.",
        "Half my order arrived but the {item} is missing.",
        "My delivery was rescheduled again without any notice, where is my {item}?",
        "My {item} was sent to my old address even though I updated it.",
        "The {item} showed up with a hole in the box and scuffs from shipping.",
        "Can I collect my {item} from the depot? I keep missing the driver.",
        "The parcel with my {item} was left at {place} instead of my door.",
        "Hi again, {issue} and nobody has called me back.",
        "Where is my {item}? Order {order} is late.",
        "Not happy with the delivery, {issue}.",
        "Problem with order {order}: {issue}.",
    ],
    "defect": [
        "My new {item} {problem}. Is this covered by the warranty?",
        "Our {item} {problem}, which makes it pretty much useless.",
        "Quality issue with order {order}: the {item} {problem}.",
        "Please advise, my {item} {problem} and I can't use it.",
        "My {item} {problem}.",
        "My {item} {problem}. How do I start a warranty claim?",
        "Second time this has happened, the {item} {problem}.",
        "Not sure if this is normal but my {item} {problem}.",
        "I've had the {item} for {n} days and it {problem}.",
        "Help, the {item} {problem}!",
        "Something is wrong with my {item}, it {problem}.",
        "Can you send a replacement? My {item} {problem}.",
        "Brand new {item} and it {problem}.",
        "The {item} {problem}. I already tried {tried}.",
        "Is it a known issue that the {item} {problem}?",
        "Two weeks in and the {item} {problem}.",
        "This is my second {item} and it {problem} too.",
        "Is there a fix for this? My {item} {problem}.",
        "The {item} I bought {ago} {problem}.",
        "Straight out of the box the {item} {problem}.",
        "My {item} {problem} and I've barely used it.",
        "I think my {item} is faulty, it {problem}.",
        "The {item} we got for our {room} {problem}.",
        "Really disappointed, my {item} {problem}.",
        "Since {day}, my {item} {problem}.",
    ],
    "praise": [
        "Your support agent {agent} helped me set up the {item} in minutes. Thank you!",
        "Would definitely recommend the {item}, it {praise}.",
        "Shout out to {agent} from support for helping me with my {item}.",
        "Thank you {agent} for the quick answer, and the {item} {praise}.",
        "Already recommended the {item} to friends because it {praise}.",
        "I'll be buying another {item} for my {relative}, it {praise}.",
        "I've used the {item} every day for a month and it {praise}.",
        "Just a quick note that my {item} {praise}. Love it!",
        "The {item} exceeded my expectations, it {praise}.",
        "Thanks for a great product, the {item} {praise}.",
        "The {item} is perfect, thank you!",
        "My whole family loves the {item}, it {praise}.",
        "Really happy with my new {item}, it {praise}.",
        "Bought the {item} {ago} and it {praise}.",
        "Best purchase this year. The {item} {praise}.",
        "Great value for money, the {item} {praise}.",
        "I just wanted to say the {item} {praise}.",
        "I was sceptical, but the {item} {praise}.",
        "So glad I chose this {item}. It {praise}.",
        "Happy customer here. The {item} {praise}.",
        "Honestly impressed, the {item} {praise}.",
        "Kudos to your team, the {item} {praise}.",
        "Five stars for the {item}. It {praise}.",
        "Love love love the {item}, it {praise}!",
        "Ten out of ten, the {item} {praise}.",
        "The {item} {praise}. Great quality!",
        "Thank you, the {item} {praise}.",
    ],
}
# Cross-cutting frames borrow another label's words but keep this label's main intent.
CROSS = {
    "billing": [
        "Love the {item}! But code {code} wasn't applied, can you refund the difference?",
        "The {item} arrived fine, but I was charged twice for it.",
        "I was charged ${fee} for express shipping on the {item} but chose free delivery.",
        "I sent back the broken {item} {ago}, where is my refund?",
        "The {item} works great, but I was charged ${amount} instead of ${amount2}.",
        "Delivery was quick, but the invoice shows the wrong price for the {item}.",
        "Nothing is wrong with the {item}, I just need a copy of the invoice.",
    ],
    "delivery": [
        "Tracking says delivered but there's no {item} here. I want my parcel, not a refund.",
        "The box was crushed in transit and the {item} is scratched, please send a new one.",
        "I was charged for next-day delivery but the {item} took {n} days to arrive.",
        "Really excited about the {item} but it was left at {place}.",
        "I paid extra for express shipping and my {item} still hasn't shipped.",
        "Can't wait to try the {item}, but tracking hasn't moved since {day}.",
    ],
    "defect": [
        "Do I have to return the {item} for a refund or can you fix it? It {problem}.",
        "I paid ${amount} for this {item} and it {problem}.",
        "I'm not asking for a refund, I just want the {item} fixed, it {problem}.",
        "Loved the {item} at first, but now it {problem}.",
        "My {item} {problem}. I'd rather have it repaired than get a refund.",
        "Delivery was on time, but the {item} {problem}.",
        "The {item} arrived quickly but it {problem}.",
    ],
    "praise": [
        "Thanks for sorting out the double charge so quickly. Also, the {item} {praise}!",
        "Worth every cent of the ${amount}, the {item} {praise}.",
        "Had a small issue at first but support fixed it and now the {item} {praise}.",
        "The {item} arrived two days early and it {praise}.",
        "I almost asked for a refund, but after a week the {item} {praise}.",
        "Delivery was super fast and the {item} {praise}.",
        "The packaging was great and the {item} {praise}.",
    ],
}
OPENERS = [
    "Hi,",
    "Hello,",
    "Hello team,",
    "Hey,",
    "Hi there,",
    "Good morning,",
    "Dear support,",
    "Hi all,",
    "Order #{order}:",
    "Re: order {order} -",
]
CLOSERS = {
    "complaint": [
        "Thanks.",
        "Please help.",
        "Thank you.",
        "Any update would be appreciated.",
        "Thanks in advance.",
        "Please advise.",
        "Regards, {name}",
    ],
    "praise": ["Cheers!", "Thanks again.", "Keep it up!", "Regards, {name}", "Have a great day."],
}
TYPOS = {
    "received": "recieved",
    "definitely": "definately",
    "please": "pls",
    "Please": "Pls",
    "thanks": "thx",
    "Thanks": "Thx",
    "you": "u",
    "order": "oder",
    "charged": "chargd",
    "delivery": "delivey",
    "really": "realy",
    "already": "allready",
    "address": "adress",
    "arrived": "arived",
    "since": "sinse",
    "recommend": "reccomend",
    "warranty": "warrenty",
    "invoice": "invoce",
    "working": "workign",
}
# Slots masked out when comparing frames: rows may not share a frame and its domain words (item, problem, addon, ...).
INCIDENTAL = (
    "day",
    "ago",
    "pay",
    "place",
    "agent",
    "relative",
    "name",
    "order",
    "n",
    "amount",
    "amount2",
    "small",
    "fee",
)
CROSS_SHARE, OPENER_RATE, CLOSER_RATE, LOWER_RATE, NOPUNCT_RATE, TYPO_RATE = 0.10, 0.40, 0.30, 0.08, 0.10, 0.08


class Slots(dict):
    """Fills template slots lazily; each slot is drawn once per message, so repeats agree."""

    def __init__(self, rng, domain):
        super().__init__()
        self.rng, self.domain = rng, domain

    def __missing__(self, key):
        rng, vocab, items = self.rng, DOMAIN[self.domain], ITEMS[self.domain]
        if key == "item":
            value = rng.choice(list(items))
        elif key in ("problem", "praise"):
            value = rng.choice(items[self["item"]][1 + (key == "praise")].split("|"))
        elif key == "issue":
            value = rng.choice(vocab["issue"]).replace("{item}", self["item"])
        elif key in ("amount", "small"):  # amounts scale with the item's usual price
            top = items[self["item"]][0] * (0.25 if key == "small" else 1)
            value = f"{rng.randint(int(top * 0.3) + 1, int(top))}.{rng.choice(['99', '00', '49', '95'])}"
        elif key == "amount2":  # the lower of two prices
            value = f"{int(float(self['amount']) * rng.uniform(0.55, 0.9))}.{rng.choice(['99', '00', '49'])}"
        elif key in ("order", "n", "fee"):
            low, high = {"order": (10000, 99999), "n": (3, 14), "fee": (5, 39)}[key]
            value = str(rng.randint(low, high)) + (".99" if key == "fee" else "")
        else:
            value = rng.choice(vocab.get(key) or SHARED[key])
        self[key] = value
        return value


def compose(rng, domain, label, cross):
    """One message and its core (the frame with incidental slots masked): frame, opener, closer, light noise."""
    slots, frame = Slots(rng, domain), rng.choice((CROSS if cross else TEMPLATES)[label])
    body = frame.format_map(slots)
    core = frame.format_map({**slots, **dict.fromkeys(INCIDENTAL, "_")})
    parts = [body[0].upper() + body[1:]]
    if rng.random() < OPENER_RATE:
        opener = rng.choice(OPENERS).format_map(slots)
        if opener.endswith(",") and body.split()[0] not in ("I", "I've", "I'm", "I'll", "I'd"):
            parts[0] = body[0].lower() + body[1:]  # "Hi, my laptop ..." rather than "Hi, My laptop ..."
        parts.insert(0, opener)
    if not any(mark + " " in body for mark in ".?!") and rng.random() < CLOSER_RATE:  # closers only after one sentence
        parts.append(rng.choice(CLOSERS["praise" if label == "praise" else "complaint"]).format_map(slots))
    words = " ".join(parts).split()
    typo_at = [i for i, word in enumerate(words) if word.strip(".,!?") in TYPOS]
    if typo_at and rng.random() < TYPO_RATE:
        i = rng.choice(typo_at)
        words[i] = words[i].replace(words[i].strip(".,!?"), TYPOS[words[i].strip(".,!?")])
    text = " ".join(words)
    if rng.random() < LOWER_RATE:
        text = text.lower()
    if rng.random() < NOPUNCT_RATE:
        text = text.rstrip(".!")
    return text, core


def normalise(text):
    return " ".join(text.lower().split())


def build(rng, domain, seen):
    """ROWS_PER_LABEL rows per label, shuffled. `seen` spans both files and holds normalised texts and cores,
    so no text is repeated or shared, and no two rows differ only in openers, closers, numbers, days or names."""
    rows = []
    for label in LABELS:
        for i in range(ROWS_PER_LABEL):
            cross = i < round(CROSS_SHARE * ROWS_PER_LABEL)
            for attempt in itertools.count():
                text, core = compose(rng, domain, label, cross)
                new = normalise(text) not in seen and core not in seen
                if new and text.strip() and 6 <= len(text.split()) <= 30 and len(text) < 300:
                    break
                if attempt > 10_000:
                    raise RuntimeError(f"cannot find a new {label} text for {domain}")
            seen.update((normalise(text), core))
            rows.append({"text": text, "label": label})
    rng.shuffle(rows)
    return rows


def report(path):
    """Read the file back, print its checks and 12 sample rows; return its normalised texts."""
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    words = [len(row["text"].split()) for row in rows]
    print(f"\n== {path}: {len(rows)} rows, {round(CROSS_SHARE * ROWS_PER_LABEL)} per label from cross-cutting frames")
    print("rows per label:", {label: sum(row["label"] == label for row in rows) for label in LABELS})
    print(
        f"words min/max/mean: {min(words)}/{max(words)}/{sum(words) / len(words):.1f}, max chars: {max(len(r['text']) for r in rows)}"
    )
    texts = {normalise(row["text"]) for row in rows}
    print(
        f"distinct texts: {len({row['text'] for row in rows})}, distinct after normalising case and whitespace: {len(texts)}"
    )
    for row in random.Random(7).sample(rows, 12):
        print(f"  {row['label']:<8} | {row['text']}")
    return texts


def main():
    rng, seen, texts = random.Random(SEED), set(), []
    for domain in ITEMS:
        rows = build(rng, domain, seen)
        path = OUT_DIR / f"{domain}.csv"
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=["text", "label"])
            writer.writeheader()
            writer.writerows(rows)
        texts.append(report(path))
    print(f"\ntexts shared between the files (normalised): {len(texts[0] & texts[1])}")
    assert not texts[0] & texts[1] and all(len(t) == len(LABELS) * ROWS_PER_LABEL for t in texts)
    # Drawn after the labelled files, so they stay exactly as they were; `seen` keeps these texts new.
    unlabeled = build(rng, "home", seen)
    path = OUT_DIR / "home-unlabeled.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["text"])
        writer.writeheader()
        writer.writerows({"text": row["text"]} for row in unlabeled)
    print(f"\n== {path}: {len(unlabeled)} unlabeled home-goods texts, none in the labelled files")


if __name__ == "__main__":
    main()
