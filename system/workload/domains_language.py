"""Templates and slot vocabularies of the labelled corpus: creative writing, translation, summarisation, chat.

These domains borrow subjects from the technical ones on purpose (a poem about a programmer, a contract
clause to translate, a medical abstract to summarise), so clustering by vocabulary is not trivially perfect.
"""

from __future__ import annotations

from system.workload.domain_spec import Domain, OutputLength

CREATIVE_WRITING = Domain(
    label="creative_writing",
    # stories and poems: the longest answers, wide spread
    output=OutputLength(median=450, sigma=0.5, lo=64, hi=1500),
    templates=[
        "Write a {form} about {subject} {setting}, in the style of {style}.",
        "{ask} write a {form} where {character} discovers {twist}?",
        "Give me an opening paragraph for a {genre} novel set {setting}.",
        "Write a {form} from the point of view of {character}. Tone: {tone}.",
        "Continue this story: '{opening}'",
        "Brainstorm five plot ideas for a {genre} story about {subject}.",
        "Write dialogue between {character} and {character2} arguing about {subject}.",
        "Compose a {tone} {form} for my {occasion}.",
        "Describe {setting_noun} at dawn using vivid sensory imagery, as a short {form}.",
    ],
    contexts=[
        "Make the story about 500 words long.",
        "I want vivid imagery and a surprising ending.",
        "It's for a creative writing workshop.",
        "Use rhyme if it's a poem, and give it a title.",
        "The characters should feel real, with a little humour.",
        "I'm writing a novel and have writer's block.",
        "Show, don't tell, and keep the narrative voice consistent.",
    ],
    slots={
        "ask": ["Can you", "Could you", "Please"],
        "form": [
            "short story",
            "poem",
            "haiku sequence",
            "sonnet",
            "flash fiction piece",
            "song lyric",
            "fable",
        ],
        "subject": [
            "a lighthouse keeper who collects letters",
            "a robot learning to paint",
            "a programmer who finds a bug that predicts the future",
            "a doctor on her last night shift",
            "two rival bakers",
            "a lawyer defending a talking cat",
            "the last tree in a city",
            "a dragon afraid of heights",
            "a letter that arrives fifty years late",
        ],
        "setting": [
            "in a flooded Venice",
            "on a generation starship",
            "in a small village during the winter festival",
            "in Victorian London",
            "in a cyberpunk megacity",
            "on the night before an election",
        ],
        "setting_noun": [
            "a mountain monastery",
            "an abandoned train station",
            "a desert oasis",
            "a harbour town",
        ],
        "style": ["Edgar Allan Poe", "a fairy tale", "noir detective fiction", "Mary Oliver", "a Greek myth"],
        "character": [
            "a retired astronaut",
            "a shy teenage witch",
            "an old fisherman",
            "a ghost who works as a librarian",
            "a cat that can read minds",
            "a time traveller",
        ],
        "character2": ["her estranged brother", "a suspicious detective", "the moon", "a chess grandmaster"],
        "twist": [
            "a hidden door behind the bookshelf",
            "that their memories are borrowed",
            "a map drawn in invisible ink",
            "that the storm is alive",
        ],
        "genre": ["fantasy", "science fiction", "mystery", "romance", "horror", "magical realism"],
        "tone": ["melancholic", "whimsical", "hopeful", "eerie", "funny", "bittersweet"],
        "opening": [
            "The clock in the hallway struck thirteen, and everyone pretended not to notice.",
            "She had kept the key for twenty years without knowing which door it opened.",
            "On the morning the sea disappeared, the children went out to walk on its floor.",
            "Nobody in the village had ever seen a stranger arrive by the northern road.",
        ],
        "occasion": ["sister's wedding", "best friend's birthday", "grandfather's retirement", "anniversary"],
    },
)

TRANSLATION = Domain(
    label="translation",
    # about as long as the passage it translates: short
    output=OutputLength(median=90, sigma=0.5, lo=8, hi=512),
    templates=[
        'Translate into {language}: "{passage}"',
        "{ask} translate this {register} sentence from English to {language}? {passage}",
        'How do you say "{phrase}" in {language}?',
        "Translate the following from {language} to English: {foreign}",
        "Please translate this paragraph into {language} and keep the {register} tone:\n{passage}",
        'What is the most natural {language} translation of "{phrase}"? Give two alternatives.',
        "Translate to {language} for a {audience}: {passage}",
        'Is this {language} translation correct? English: "{phrase}" — translation: {foreign}',
    ],
    contexts=[
        "Please keep the meaning and the tone of the original text.",
        "I'm learning the language and want an accurate translation.",
        "A native speaker will check the translated text later.",
        "This is for a bilingual sign at our hotel.",
        "Translate word for word first, then give a fluent version.",
        "The translation will go into the user manual.",
    ],
    slots={
        "ask": ["Can you", "Could you", "Please"],
        "language": [
            "French",
            "German",
            "Spanish",
            "Japanese",
            "Italian",
            "Portuguese",
            "Mandarin Chinese",
            "Dutch",
        ],
        "register": ["formal", "casual", "technical", "polite", "legal", "medical"],
        "audience": [
            "hotel guest",
            "business partner",
            "medical patient",
            "software user",
            "tourist brochure",
        ],
        "passage": [
            "The meeting has been moved to Thursday at 10 a.m.; please confirm your attendance.",
            "Take one tablet twice a day after meals and contact your doctor if the rash persists.",
            "The tenant shall pay the rent no later than the fifth day of each month.",
            "Click the settings icon, then select 'Reset password' and follow the instructions.",
            "Thank you for your order. Your package will arrive within three to five business days.",
            "The museum is closed on Mondays, but guided tours are available every other day.",
            "We regret to inform you that the flight has been cancelled due to bad weather.",
            "This software is provided as is, without warranty of any kind.",
            "Could you recommend a good restaurant near the train station?",
        ],
        "phrase": [
            "I'm looking forward to working with you",
            "Where is the nearest pharmacy?",
            "Break a leg",
            "Could I have the bill, please?",
            "It's raining cats and dogs",
            "Nice to meet you",
            "The contract expires next year",
        ],
        "foreign": [
            "Je voudrais réserver une table pour deux personnes ce soir.",
            "Können Sie mir bitte sagen, wie ich zum Bahnhof komme?",
            "Me gustaría cambiar la fecha de mi cita con el médico.",
            "Il contratto deve essere firmato da entrambe le parti.",
            "Obrigado pela sua paciência, o sistema voltará em breve.",
            "Het pakket wordt morgen tussen negen en twaalf bezorgd.",
        ],
    },
)

SUMMARISATION = Domain(
    label="summarisation",
    # condensed answers: short-medium, narrow spread
    output=OutputLength(median=150, sigma=0.4, lo=32, hi=512),
    templates=[
        "Summarise the following {source} in {count} bullet points:\n{passage} {passage2}",
        "TL;DR this {source}: {passage} {passage2}",
        "{ask} give me a one-paragraph summary of this {source} for {audience}? {passage}",
        "Condense this {source} into a {count}-sentence abstract: {passage} {passage2}",
        "What are the key takeaways of this {source}? {passage}",
        "Write an executive summary of the {source} below, highlighting {focus}.\n{passage} {passage2}",
        "Summarize the main arguments of {work} in plain language.",
    ],
    contexts=[
        "I don't have time to read the whole document.",
        "Keep the summary brief and neutral.",
        "Focus on the main points and conclusions.",
        "The summary will go into our weekly newsletter.",
        "Highlight any numbers and key findings in the summary.",
        "Skip the background and summarise only the results.",
    ],
    slots={
        "ask": ["Can you", "Could you", "Please"],
        "source": [
            "article",
            "meeting transcript",
            "research abstract",
            "news report",
            "email thread",
            "quarterly report",
            "court opinion",
            "clinical study",
        ],
        "count": ["three", "five", "two", "four"],
        "audience": ["a busy manager", "a high-school student", "our newsletter", "non-experts", "the board"],
        "focus": ["risks and next steps", "the financial impact", "open questions", "decisions taken"],
        "passage": [
            "The randomised trial enrolled 1,200 adults with hypertension and found that the new drug "
            "lowered systolic blood pressure by 9 mmHg compared with placebo over 12 weeks.",
            "The court held that the employer had breached the contract by dismissing the employee without "
            "the notice period required, and awarded damages equal to three months' salary.",
            "Revenue grew 14 percent year over year, driven by subscription sales in Europe, while operating "
            "costs rose because of new hires in engineering and marketing.",
            "In the meeting, the team agreed to postpone the product launch by two weeks, assign two more "
            "engineers to fix the payment bugs, and review progress again on Friday.",
            "Researchers trained a neural network on satellite images to estimate crop yields and found that "
            "its predictions matched ground surveys within eight percent in most regions.",
            "The city council voted to expand the bike lane network, citing a drop in traffic accidents and "
            "strong support from residents in the public consultation.",
            "Heavy rainfall caused flooding across the northern provinces, forcing thousands of residents to "
            "evacuate and closing several major roads for the weekend.",
        ],
        "passage2": [
            "Critics argue the sample was too small to draw firm conclusions.",
            "The decision is expected to be appealed.",
            "Analysts expect growth to slow in the next quarter.",
            "Several participants raised concerns about the timeline.",
            "Further studies are planned for next year.",
            "",
        ],
        "work": [
            "Adam Smith's The Wealth of Nations",
            "the Federalist Papers",
            "Darwin's On the Origin of Species",
            "the paper 'Attention Is All You Need'",
            "Orwell's essay Politics and the English Language",
        ],
    },
)

CHIT_CHAT = Domain(
    label="chit_chat",
    # small talk: short answers
    output=OutputLength(median=45, sigma=0.6, lo=8, hi=256),
    templates=[
        "{greeting} How are you doing today?",
        "{greeting} I just {event}. {feeling}",
        "What's your favourite {thing}? Mine is {favourite}.",
        "Do you think {opinion_topic}?",
        "I'm bored. Tell me something fun about {fun_topic}.",
        "{greeting} Any plans for the weekend? I'm thinking of {plan}.",
        "Can you recommend a {thing} for a {mood} evening?",
        "Haha, that's funny. What else do you like to talk about?",
        "I had a long day at {place}. {feeling}",
        "Would you rather {choice} or {choice2}?",
    ],
    contexts=[
        "lol",
        "Just chatting, nothing serious.",
        "I'm having a coffee right now.",
        "It's so sunny outside today!",
        "My friends say I talk too much, haha.",
        "Sorry, random question.",
        "Anyway, how was your day?",
    ],
    slots={
        "greeting": ["Hi!", "Hey there.", "Good morning!", "Hello!", "Yo,", "Hey, it's me again."],
        "event": [
            "got back from a trip to Lisbon",
            "adopted a puppy",
            "finished my first marathon",
            "started a new job as a nurse",
            "fixed a bug that took me all week",
            "moved to a new apartment",
        ],
        "feeling": [
            "I'm so happy!",
            "Feeling a bit tired, to be honest.",
            "Not sure how I feel about it.",
            "Just wanted to share.",
            "What a week.",
        ],
        "thing": ["movie", "book", "song", "board game", "pizza topping", "season", "TV show"],
        "favourite": [
            "the one with the time loop",
            "pineapple",
            "autumn",
            "jazz",
            "chess",
            "anything by Pixar",
        ],
        "opinion_topic": [
            "cats are better than dogs",
            "it's okay to put ketchup on pasta",
            "aliens exist",
            "remote work is here to stay",
            "summer is the best season",
        ],
        "fun_topic": ["octopuses", "space", "the ocean", "ancient Rome", "penguins", "volcanoes"],
        "plan": ["going hiking", "watching movies all day", "visiting my parents", "trying a new recipe"],
        "mood": ["rainy", "lazy", "cozy", "romantic"],
        "place": ["the office", "school", "the hospital", "work", "the gym"],
        "choice": ["be able to fly", "live by the sea", "never sleep", "speak every language"],
        "choice2": ["be invisible", "live in the mountains", "never eat", "play every instrument"],
    },
)
