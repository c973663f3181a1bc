"""Dutch names, streets, places and the retailer's catalogue used to build the demo world.

Kept as plain tuples so the generator can index them with numpy arrays (vectorised sampling).
"""

from __future__ import annotations

# (formal first name, gender, diminutives / nicknames used in practice)
FIRST_NAMES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("Sophia", "V", ("Sofie", "Sofietje", "Fie")),
    ("Johannes", "M", ("Jan", "Hans", "Johan")),
    ("Wilhelmina", "V", ("Willemijn", "Mien", "Wilma")),
    ("Catharina", "V", ("Karin", "Toos", "Tineke")),
    ("Cornelis", "M", ("Kees", "Cees", "Niels")),
    ("Hendrik", "M", ("Henk", "Rik", "Henkie")),
    ("Petronella", "V", ("Nel", "Petra", "Nelleke")),
    ("Adrianus", "M", ("Arie", "Adri", "Janus")),
    ("Johanna", "V", ("Anneke", "Hanneke", "Jo")),
    ("Elisabeth", "V", ("Lisa", "Els", "Liesbeth")),
    ("Gerardus", "M", ("Gerard", "Gert", "Ger")),
    ("Maria", "V", ("Marie", "Mies", "Marijke")),
    ("Jacobus", "M", ("Jaap", "Koos", "Sjaak")),
    ("Margaretha", "V", ("Greet", "Margriet", "Grietje")),
    ("Franciscus", "M", ("Frans", "Frank", "Cisca")),
    ("Theodora", "V", ("Dora", "Door", "Thea")),
    ("Wilhelmus", "M", ("Willem", "Wim", "Pim")),
    ("Alexandra", "V", ("Sandra", "Lexi", "Alex")),
    ("Abraham", "M", ("Bram", "Braam", "Abe")),
    ("Geertruida", "V", ("Truus", "Geertje", "Trudy")),
    ("Emma", "V", ()),
    ("Julia", "V", ("Juul", "Jules")),
    ("Anna", "V", ("Anne", "Anouk", "Annie")),
    ("Lotte", "V", ("Lot", "Lotje")),
    ("Sanne", "V", ()),
    ("Fleur", "V", ()),
    ("Eva", "V", ("Eefje",)),
    ("Daan", "M", ()),
    ("Lucas", "M", ("Luuk", "Luc")),
    ("Sem", "M", ()),
    ("Thomas", "M", ("Tom", "Thom")),
    ("Maximiliaan", "M", ("Max", "Maxime")),
    ("Noah", "M", ()),
    ("Tess", "V", ("Tessa",)),
    ("Isabella", "V", ("Isa", "Bella")),
    ("Femke", "V", ()),
    ("Roos", "V", ("Roosje",)),
    ("Bas", "M", ("Sebastiaan",)),
    ("Ruben", "M", ()),
    ("Jeroen", "M", ("Jer",)),
    ("Marloes", "V", ("Loes",)),
    ("Esther", "V", ()),
    ("Ingrid", "V", ("Inge",)),
    ("Mohamed", "M", ("Mo",)),
    ("Fatima", "V", ("Fatma",)),
    ("Yasmina", "V", ("Yasmin",)),
    ("Mehmet", "M", ()),
    ("Priya", "V", ()),
    ("Nicolaas", "M", ("Klaas", "Niek", "Nico")),
    ("Dirk", "M", ("Dick", "Dik")),
    ("Hendrika", "V", ("Riek", "Rika", "Henny")),
    ("Cornelia", "V", ("Corrie", "Cor", "Nelly")),
    ("Adriana", "V", ("Ria", "Jaantje")),
    ("Josephina", "V", ("Josje", "Fien", "Fenna")),
    ("Charlotte", "V", ("Charlie", "Lotte")),
    ("Rebecca", "V", ("Becky", "Bekkie")),
    ("Evelien", "V", ("Eef", "Eva")),
    ("Jasmijn", "V", ("Jas", "Mijn")),
    ("Laura", "V", ()), ("Noor", "V", ()), ("Lisa", "V", ()), ("Sara", "V", ()), ("Mila", "V", ()),
    ("Nina", "V", ()), ("Lieke", "V", ()), ("Iris", "V", ()), ("Maud", "V", ()), ("Marieke", "V", ()),
    ("Pieter", "M", ("Piet", "Peter")), ("Gerrit", "M", ("Gert", "Gerry")), ("Joost", "M", ()), ("Stijn", "M", ()),
)

LAST_NAMES: tuple[str, ...] = (
    "de Jong", "Jansen", "de Vries", "van den Berg", "van Dijk", "Bakker", "Janssen", "Visser", "Smit",
    "Meijer", "de Boer", "Mulder", "de Groot", "Bos", "Vos", "Peters", "Hendriks", "van Leeuwen", "Dekker",
    "Brouwer", "de Wit", "Dijkstra", "Smits", "de Graaf", "van der Meer", "van der Linden", "Kok", "Jacobs",
    "de Haan", "Vermeulen", "van den Heuvel", "van der Veen", "van den Broek", "de Bruijn", "de Bruin",
    "van der Heijden", "Schouten", "van Beek", "Willems", "van Vliet", "van de Ven", "Hoekstra", "Maas",
    "Verhoeven", "Koster", "van Dam", "van der Wal", "Prins", "Blom", "Huisman", "Peeters", "de Leeuw",
    "Kuipers", "van Wijk", "Postma", "Kramer", "van den Bosch", "Schipper", "Vink", "Timmermans",
    "Yilmaz", "El Amrani", "Bouzid", "Kaya", "Nguyen", "Sarmo", "Ramdin", "Tjon", "Zuiderveld", "Oosterhuis",
    "Boer", "Groen", "Wouters", "Verbeek", "Lammers", "Hermans", "Evers", "van Wijngaarden", "Sanders", "Koning",
    "van Rijn", "Gerritsen", "Verschuren", "de Lange", "Aalbers", "Molenaar", "van Es", "Hofman", "Bosman",
    "Veenstra", "Jonker", "Kuiper", "van Doorn", "Pronk", "Brink", "Wijnands", "Claassen", "Martens", "van Os",
    "Heemskerk", "Rutten", "Goossens", "Driessen", "Kusters", "Geurts", "Linssen", "Hoogendoorn", "Vonk",
    "Sluiter", "de Ruiter", "van Zanten", "Steenbergen", "Boersma", "Wiersma", "Terpstra", "Kingma", "Mulders",
    "Wolters", "Mol", "Hoekman", "van Vugt", "Scholten", "Nijhuis", "Ten Hove", "Lubbers", "Haverkamp",
    "Meulenbelt", "Brinkman", "Dijkman", "van Gils", "Ouwehand", "Overbeek", "Roos", "Plasman", "Zwart",
    "Visscher", "van Loon", "Schreurs", "Bruins", "Kroon", "Admiraal", "Ozturk", "Demir", "Benali", "Haddou",
    "Mahabier", "Soekhoe", "Pinas", "Tan", "Lim", "Wong", "Kowalski", "Nowak", "Rossi", "Garcia", "Smeets",
    "Cornelissen", "Verhagen", "van Beers", "Eijkelenboom", "Blokland", "Vroom", "Ploeg", "Dam", "de Kok",
)

STREETS: tuple[str, ...] = (
    "Kerkstraat", "Schoolstraat", "Molenweg", "Dorpsstraat", "Stationsweg", "Julianastraat", "Beatrixlaan",
    "Wilhelminastraat", "Nieuwstraat", "Kastanjelaan", "Eikenlaan", "Lindelaan", "Parallelweg", "Markt",
    "Prinsengracht", "Herengracht", "Keizersgracht", "Oranjestraat", "Emmastraat", "Irenestraat",
    "Sportlaan", "Tulpstraat", "Rozenstraat", "Vondelstraat", "Rembrandtlaan", "Van Goghstraat",
    "Hoofdstraat", "Industrieweg", "Burgemeester de Withstraat", "Koningin Julianaweg", "Zonnebloemstraat",
    "Berkenlaan", "Populierenlaan", "Merelstraat", "Kievitstraat", "Spoorlaan", "Havenstraat", "Dijkweg",
    "Leidsestraat", "Amstelveenseweg",
)

# (city, first postcode number, last postcode number)
CITIES: tuple[tuple[str, int, int], ...] = (
    ("Amsterdam", 1011, 1109), ("Rotterdam", 3011, 3089), ("Den Haag", 2491, 2599), ("Utrecht", 3511, 3585),
    ("Eindhoven", 5611, 5658), ("Groningen", 9711, 9747), ("Tilburg", 5011, 5049), ("Almere", 1311, 1363),
    ("Breda", 4811, 4839), ("Nijmegen", 6511, 6546), ("Haarlem", 2011, 2037), ("Arnhem", 6811, 6846),
    ("Zaandam", 1501, 1509), ("Amersfoort", 3811, 3829), ("Apeldoorn", 7311, 7339), ("Enschede", 7511, 7548),
    ("Zwolle", 8011, 8043), ("Leiden", 2311, 2334), ("Maastricht", 6211, 6229), ("Dordrecht", 3311, 3329),
    ("Delft", 2611, 2629), ("Alkmaar", 1811, 1829), ("Hilversum", 1211, 1223), ("Leeuwarden", 8911, 8939),
    ("Deventer", 7411, 7429), ("Den Bosch", 5211, 5237), ("Gouda", 2801, 2809), ("Hoorn", 1621, 1628),
)
POSTCODE_LETTERS = "ABCDEFGHJKLMNPRTVWXZ"

EMAIL_DOMAINS: tuple[str, ...] = (
    "gmail.com", "hotmail.com", "outlook.com", "ziggo.nl", "kpnmail.nl", "live.nl", "icloud.com",
    "planet.nl", "xs4all.nl", "hotmail.nl", "yahoo.com", "home.nl",
)

# (category, mean repurchase cycle in weeks, mean line amount EUR, share of persons buying it)
CATEGORIES: tuple[tuple[str, float, float, float], ...] = (
    ("shower_foam", 4.0, 9.5, 0.55),
    ("hand_soap", 5.0, 11.0, 0.35),
    ("body_cream", 6.0, 19.5, 0.40),
    ("candles", 10.0, 27.0, 0.30),
    ("fragrance", 16.0, 59.0, 0.25),
    ("gift_sets", 52.0, 39.0, 0.35),  # seasonal: December and Mother's Day, not cycle driven
)
PRODUCTS_PER_CATEGORY = 12

# Values people and systems put in when they do not want to / cannot fill a field.
PLACEHOLDER_EMAILS: tuple[str, ...] = ("test@test.com", "geen@email.nl", "noreply@rituals.com")
PLACEHOLDER_PHONES: tuple[str, ...] = ("0000000000", "0612345678", "onbekend")
PLACEHOLDER_NAMES: tuple[str, ...] = ("onbekend", "test", "xxx")

UTM_SOURCES: tuple[str, ...] = ("google", "facebook", "instagram", "newsletter", "tiktok", "pinterest")
REFERRERS: tuple[str, ...] = (
    "https://www.google.com/", "https://www.google.nl/", "https://www.instagram.com/", "https://l.facebook.com/",
    "https://www.bing.com/", "", "https://mail.google.com/",
)
SEARCH_TERMS: tuple[str, ...] = (
    "sakura", "karma", "ayurveda", "hammam", "mehr", "jing", "cadeau", "kaars", "douchegel", "bodycream",
    "parfum", "handzeep", "advent", "giftset",
)
SERVICE_CHANNELS: tuple[str, ...] = ("whatsapp", "phone", "email")
