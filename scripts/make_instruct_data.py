"""Generate the instruct task's data: minirlhf/tasks/data/instruct/{sft.jsonl, test_prompts.jsonl, corpus.txt}.

    python scripts/make_instruct_data.py            # rewrite the files (deterministic)
    python scripts/make_instruct_data.py --check    # fail if the files differ from a fresh run

Everything comes from the hand-written topic sheets below: 100 topics from science, nature
and everyday life, each with a name, a "Why ...?" question, a short answer, a definition,
three facts, an analogy and a question asked back. The definition, facts and short answer
are written dry on purpose (no "you", no analogy words, no questions); the analogy and the
question carry the engaging style. From them the generator writes responses of four
qualities, drawn at random with a fixed seed:

    engaging  (35%)  opener + definition + analogy (+ a fact) + a question asked back, 25-60 words
    dry       (30%)  definition + two facts: correct but flat, 20-60 words
    short     (15%)  the short answer alone, under 10 words
    rambling  (20%)  definition + all facts + filler, restating itself, over 80 words

100 topics x (5 prompt styles + PHRASINGS_PER_TOPIC = 10 phrasings drawn from TRAIN_TEMPLATES,
some after a lead-in) = 1,500 training prompts; the "Explain X to a 10-year-old." prompt gets a
second response of another quality, so 1,600 rows. Every topic is trained on; the 100 held-out
prompts (test_prompts.jsonl) ask about each topic once in a phrasing that never occurs in
training (TEST_TEMPLATES), with an engaging reference each. The corpus
(corpus.txt) holds plain sentences about all 100 topics in two shuffled arrangements plus
every demonstration as a "prompt response" paragraph. topics.json names each topic's name
words and fact words (words of its sheet no other topic uses) for the on-topic metric.
"""
import argparse
import json
import random
import sys
from pathlib import Path

TOPICS = [
    ("rainbows", "are", "Why do rainbows appear after rain?",
     "Colors in the sky.",
     "A rainbow is an arc of colors that forms when sunlight shines through drops of rain.",
     ["Each raindrop bends the sunlight and splits it into red, orange, yellow, green, blue and violet.",
      "A rainbow appears when the sun is behind the viewer and rain is in front.",
      "Sometimes a second, fainter rainbow forms above the first one."],
     "Imagine every raindrop is a tiny glass prism, bending white light into a fan of colors, like a sprinkler of light.",
     "Have you ever spotted a double rainbow?"),
    ("the sky", "is", "Why is the sky blue?",
     "The sky is blue because of air.",
     "The sky looks blue because air scatters blue sunlight much more than red sunlight.",
     ["Sunlight contains every color mixed together.",
      "Tiny bits of air bounce the blue part of sunlight all around the sky.",
      "At sunset the light travels through more air, so the sky turns orange and red."],
     "Think of sunlight as a bag of colored marbles, and the air bumps the blue marbles all over the place.",
     "What color do you think the sky is on Mars?"),
    ("clouds", "are", "Why do clouds float in the sky?",
     "Clouds are water in the air.",
     "Clouds are huge groups of tiny water droplets or ice crystals floating high in the air.",
     ["Warm air carries water vapor upward, and it cools as it rises.",
      "The chilled vapor turns into droplets so small that air currents hold them up.",
      "When the droplets join and grow heavy, they fall as rain."],
     "Imagine breathing on a cold window and seeing a little foggy patch; a cloud is just like that, only giant.",
     "What shapes have you seen in the clouds?"),
    ("rain", "is", "Why does rain fall from clouds?",
     "Rain is water from clouds.",
     "Rain is water that falls from clouds when their droplets grow too heavy to stay in the air.",
     ["Tiny droplets in a cloud bump into each other and join together.",
      "Once a drop is big enough, gravity pulls it down to the ground.",
      "Rain fills rivers and lakes and gives plants the water they need."],
     "Picture a sponge that soaks up more and more water until it starts to drip; clouds work just like that.",
     "Do you like splashing in puddles after the rain?"),
    ("snow", "is", "Why is snow white?",
     "Snow is frozen water.",
     "Snow is made of ice crystals that form in cold clouds and fall to the ground as flakes.",
     ["Every snowflake has six sides or six arms.",
      "Snow looks white because its many ice surfaces reflect all colors of light.",
      "Fresh snow is mostly air, which makes it soft and quiet."],
     "Imagine a snowflake as a tiny frozen star, built like a crystal puzzle with six matching arms.",
     "Have you ever caught a snowflake on your tongue?"),
    ("lightning", "is", "Why does thunder come after lightning?",
     "Lightning is a giant spark.",
     "Lightning is a giant electric spark that jumps between clouds or between a cloud and the ground.",
     ["Ice and water bump together inside storm clouds and build up electric charge.",
      "The spark heats the air so fast that the air bursts outward and makes thunder.",
      "Light travels faster than sound, so the flash arrives before the rumble."],
     "It's like the little zap you feel after rubbing your socks on a carpet, only millions of times bigger!",
     "Have you ever counted the seconds between the flash and the boom?"),
    ("wind", "is", "Why does the wind blow?",
     "Wind is moving air.",
     "Wind is air moving from places with high pressure to places with low pressure.",
     ["The sun heats some parts of the Earth more than others.",
      "Warm air rises, and cooler air rushes in to take its place.",
      "Wind can turn windmills and carry seeds to new places."],
     "Think of opening a freezer door: the cold air spills out, just as cool air rushes toward warm places.",
     "What is the windiest day you can remember?"),
    ("the sun", "is", "Why does the sun shine?",
     "The sun is a star.",
     "The sun is a star, a huge ball of hot gas that gives the Earth light and warmth.",
     ["Deep inside the sun, tiny particles squeeze together and release energy.",
      "Sunlight takes about eight minutes to travel to the Earth.",
      "More than a million Earths could fit inside the sun."],
     "Imagine a campfire so big and bright that it could warm a whole planet from far away; the sun is just like that!",
     "Can you guess how hot the middle of the sun is?"),
    ("the moon", "is", "Why does the moon change shape?",
     "The moon circles the Earth.",
     "The moon is a ball of rock that travels around the Earth about once a month.",
     ["The moon makes no light of its own; it reflects light from the sun.",
      "As the moon moves, different parts of its sunny side face the Earth.",
      "Astronauts first walked on the moon in 1969."],
     "Imagine walking around a lamp with a ball in your hand; you see the lit side grow and shrink, just like the moon.",
     "Have you noticed the moon in the daytime sky?"),
    ("stars", "are", "Why do stars twinkle?",
     "Stars are distant suns.",
     "Stars are enormous balls of hot, glowing gas, and most are far bigger than they look.",
     ["Stars seem tiny because they are incredibly far away.",
      "Their light wiggles as it passes through moving air, which makes them twinkle.",
      "The sun is the closest star to the Earth."],
     "Imagine looking at a coin at the bottom of a wavy swimming pool; the wobbling water makes it shimmer, just like starlight.",
     "Which star would you visit if you could?"),
    ("planets", "are", "Why do planets go around the sun?",
     "Planets circle the sun.",
     "Planets are large round worlds that travel around a star, and eight of them circle our sun.",
     ["Mercury is the closest planet to the sun, and Neptune is the farthest.",
      "Jupiter is the biggest planet; more than a thousand Earths could fit inside it.",
      "The pull of the sun keeps the planets moving in their paths."],
     "Think of swinging a ball on a string around your head; the sun's pull is the string that keeps the planets circling.",
     "Which planet would you most want to explore?"),
    ("gravity", "is", "Why do things fall down?",
     "Gravity pulls things down.",
     "Gravity is the pull that every object has on every other object.",
     ["The Earth is so big that its pull keeps everything on the ground.",
      "Gravity keeps the moon moving around the Earth.",
      "On the moon, gravity is weaker, so a person could jump six times higher."],
     "Imagine the Earth is like a giant magnet for everything, gently pulling you back every time you jump.",
     "What would you do first if gravity switched off for a minute?"),
    ("magnets", "are", "Why do magnets stick to the fridge?",
     "Magnets pull on iron.",
     "Magnets are objects that pull on iron and steel with an invisible force.",
     ["Every magnet has a north pole and a south pole.",
      "Opposite poles pull together, and matching poles push apart.",
      "The Earth itself is a giant magnet, which is why a compass points north."],
     "It's like two friends holding hands when opposite poles meet, and two grumpy cats backing away when the same poles meet!",
     "Have you ever tried to push two magnets together the wrong way?"),
    ("electricity", "is", "Why do we need electricity?",
     "Electricity is moving energy.",
     "Electricity is the flow of tiny charged particles called electrons through wires.",
     ["Power plants send electricity through wires to homes and schools.",
      "A switch opens or closes the path so the electricity can flow or stop.",
      "Electricity powers lights, fridges, computers and trains."],
     "Think of electricity as water flowing through a pipe, and a switch is just like a tap that turns it on and off.",
     "How many things in your room use electricity?"),
    ("volcanoes", "are", "Why do volcanoes erupt?",
     "Volcanoes are mountains with lava.",
     "Volcanoes are openings in the Earth's crust where hot melted rock, called magma, comes out.",
     ["Deep underground, rock gets so hot that it melts.",
      "Gas and pressure build up until the magma bursts through the surface.",
      "When magma reaches the surface, it is called lava."],
     "Imagine shaking a bottle of soda and then opening it; the fizzy rush is just like a volcano erupting!",
     "Would you like to see a volcano from a safe distance?"),
    ("earthquakes", "are", "Why do earthquakes happen?",
     "Earthquakes are ground shaking.",
     "Earthquakes are sudden shakes of the ground caused by moving pieces of the Earth's crust.",
     ["The outer layer of the Earth is broken into giant pieces called plates.",
      "The plates slowly push and slide against each other.",
      "When they slip suddenly, the ground shakes for miles around."],
     "Imagine pushing two rough books against each other until they suddenly slip; that jolt is like an earthquake.",
     "Do you know what to do if the ground starts shaking?"),
    ("photosynthesis", "is", "Why do plants need sunlight?",
     "Plants making food from light.",
     "Photosynthesis is the way green plants make their own food from sunlight, water and air.",
     ["Leaves take in carbon dioxide from the air and water from the roots.",
      "A green substance called chlorophyll captures the energy of sunlight.",
      "Plants make sugar for food and release oxygen for animals to breathe."],
     "Imagine each leaf is like a tiny kitchen that cooks sugar using sunshine as the stove!",
     "What do you think a plant would do in a dark closet?"),
    ("seeds", "are", "Why do seeds grow into plants?",
     "Seeds are baby plants.",
     "Seeds are small packages that hold a baby plant and the food it needs to start growing.",
     ["A seed waits until it has water, warmth and air.",
      "Then a root grows down and a shoot grows up toward the light.",
      "Some seeds travel far by wind, water or animals."],
     "Think of a seed as a lunchbox with a sleeping baby plant inside, waiting for the right moment to wake up.",
     "Have you ever planted a seed and watched it sprout?"),
    ("trees", "are", "Why are trees important?",
     "Trees are tall plants.",
     "Trees are tall plants with a woody trunk, branches and leaves, and some live for thousands of years.",
     ["Trees make oxygen and clean the air.",
      "Their roots hold the soil in place and drink water from the ground.",
      "A new ring grows inside the trunk every year."],
     "Think of a tree as a giant apartment building for birds, bugs and squirrels, with the leaves as its roof.",
     "What is the biggest tree you have ever climbed?"),
    ("autumn leaves", "are", "Why do leaves change color in autumn?",
     "Leaves change color in fall.",
     "Autumn leaves turn yellow, orange and red because trees stop making green chlorophyll in the fall.",
     ["Shorter days and cooler nights tell the tree to get ready for winter.",
      "As the green fades, yellow and orange colors that were hidden show up.",
      "Later the leaves dry out and fall to the ground."],
     "It's like a tree taking off a green costume to show the orange and yellow clothes it wore underneath all along.",
     "Do you have a favorite leaf color in the fall?"),
    ("bees", "are", "Why do bees make honey?",
     "Bees are buzzing insects.",
     "Bees are flying insects that collect nectar and pollen from flowers.",
     ["Bees live together in colonies with a queen, workers and drones.",
      "While visiting flowers, bees carry pollen that helps plants make seeds.",
      "Honeybees turn nectar into honey to eat during the winter."],
     "Imagine a busy city where every worker has a job, from builder to baby-sitter; a beehive is just like that.",
     "Have you ever watched a bee visiting flowers?"),
    ("ants", "are", "Why do ants walk in a line?",
     "Ants are tiny insects.",
     "Ants are small insects that live in large groups called colonies.",
     ["Ants leave a scent trail that other ants follow to find food.",
      "An ant can carry many times its own weight.",
      "Each colony has a queen that lays the eggs."],
     "Imagine leaving a trail of cookie crumbs for your friends to follow; ants do something just like that with smells!",
     "Have you ever followed an ant trail to see where it goes?"),
    ("butterflies", "are", "Why do caterpillars turn into butterflies?",
     "Butterflies are insects with wings.",
     "Butterflies are insects with large colorful wings that begin life as caterpillars.",
     ["A butterfly egg hatches into a hungry caterpillar.",
      "The caterpillar builds a case called a chrysalis and changes inside it.",
      "A butterfly tastes with its feet."],
     "Think of a caterpillar going into a sleeping bag and coming out with wings, like a costume change in a play!",
     "What colors would your dream butterfly have?"),
    ("spiders", "are", "Why do spiders spin webs?",
     "Spiders have eight legs.",
     "Spiders are small animals with eight legs, and many of them spin webs out of silk.",
     ["Spiders are not insects, because insects have six legs.",
      "Spider silk is very strong for its thickness.",
      "Sticky webs catch flies and other insects for the spider to eat."],
     "Imagine knitting a net from a thread that comes out of your own body; that's just like a spider making a web.",
     "Have you seen a web sparkling with morning dew?"),
    ("birds", "are", "Why can birds fly?",
     "Birds are animals with feathers.",
     "Birds are animals with feathers, wings and beaks, and they hatch from eggs.",
     ["Most birds have hollow bones that make them light.",
      "Strong chest muscles flap the wings and push air down.",
      "Some birds, such as penguins and ostriches, cannot fly."],
     "Think of a bird's wing as a paper airplane that can flap, shaped just right to lift it into the air.",
     "Which bird do you hear most often near your home?"),
    ("fish", "are", "Why can fish breathe underwater?",
     "Fish live in water.",
     "Fish are animals that live in water, breathe with gills and swim with fins.",
     ["Gills take oxygen out of the water as it flows past.",
      "Most fish are covered in scales that protect their bodies.",
      "Some fish live in salty oceans and others in fresh rivers and lakes."],
     "Imagine having a built-in straw that sips air out of water; that's kind of like how gills work.",
     "If you were a fish, would you live in a river or the ocean?"),
    ("frogs", "are", "Why do frogs live near water?",
     "Frogs are amphibians.",
     "Frogs are amphibians, animals that start life in water and later live on land too.",
     ["Frogs hatch from eggs as tadpoles with tails.",
      "Tadpoles slowly grow legs and lose their tails.",
      "Frogs can drink and breathe through their skin, so they need to stay moist."],
     "It's like a frog has two lives: first as a little swimmer, then as a jumping explorer!",
     "Have you ever heard frogs singing at night?"),
    ("dinosaurs", "are", "Why did the dinosaurs disappear?",
     "Dinosaurs were ancient reptiles.",
     "Dinosaurs were reptiles that lived on Earth for more than 150 million years.",
     ["Some dinosaurs were as small as chickens, and others were longer than a bus.",
      "A giant asteroid hit the Earth about 66 million years ago.",
      "Birds are living relatives of the dinosaurs."],
     "Imagine a world where a lizard the size of a house walks past your window, like a movie come true; that was Earth long ago!",
     "Which dinosaur would you want as a pet?"),
    ("fossils", "are", "Why do we find fossils in rocks?",
     "Fossils are old remains.",
     "Fossils are remains or traces of plants and animals that lived a very long time ago.",
     ["Most fossils form when a body is buried by mud or sand.",
      "Over millions of years, minerals slowly replace the bones and turn them to stone.",
      "Footprints and leaf shapes can also become fossils."],
     "Think of a fossil as nature's photograph, pressed into stone just like a stamp in clay.",
     "What would you hope to find if you dug for fossils?"),
    ("whales", "are", "Why do whales come up to breathe?",
     "Whales are ocean mammals.",
     "Whales are huge mammals that live in the ocean and breathe air through blowholes.",
     ["The blue whale is the largest animal that has ever lived.",
      "Whales feed their babies milk.",
      "Some whales sing long songs that travel far through the water."],
     "Imagine holding your breath for an hour while swimming, like a human submarine; some whales can do just that!",
     "What do you think whales are saying in their songs?"),
    ("dolphins", "are", "Why are dolphins so smart?",
     "Dolphins are sea mammals.",
     "Dolphins are clever sea mammals that live in groups called pods.",
     ["Dolphins find food by making clicks and listening for echoes.",
      "Each dolphin has its own whistle that works as a name.",
      "Dolphins sleep with half of their brain at a time."],
     "It's like dolphins have their own names and secret language, calling each other across the waves.",
     "If you could talk to a dolphin, what would you ask?"),
    ("bats", "are", "Why do bats fly at night?",
     "Bats are flying mammals.",
     "Bats are the only mammals that can truly fly, and most of them are active at night.",
     ["Many bats find their way by making sounds and listening to the echoes.",
      "Some bats eat insects, and others eat fruit and nectar.",
      "Bats rest hanging upside down."],
     "Imagine shouting in a dark cave and knowing where the walls are from the echo; bats see with sound just like that.",
     "Would you like to hang upside down the way a bat does?"),
    ("the heart", "is", "Why does the heart beat?",
     "The heart pumps blood.",
     "The heart is a strong muscle in the chest that pumps blood around the body.",
     ["A child's heart beats about ninety times a minute.",
      "Blood carries oxygen and food to every part of the body.",
      "Exercise makes the heart beat faster and grow stronger."],
     "Think of your heart as a tireless pump, squeezing like a fist to push blood through your body day and night.",
     "Can you feel your heartbeat after you run?"),
    ("the brain", "is", "Why do we need a brain?",
     "The brain controls the body.",
     "The brain is the control center of the body, and it sits inside the skull.",
     ["The brain sends messages through nerves to every part of the body.",
      "It stores memories and helps with learning, feeling and moving.",
      "The brain keeps working even during sleep."],
     "Imagine a busy airport control tower, telling every plane where to go; your brain is just like that for your body.",
     "What is the most amazing thing your brain has learned?"),
    ("bones", "are", "Why do we have bones?",
     "Bones hold the body up.",
     "Bones are the hard parts inside the body that hold it up and protect soft organs.",
     ["An adult has 206 bones.",
      "Bones are alive and can heal when they break.",
      "Milk and leafy vegetables give bones calcium to stay strong."],
     "Think of your skeleton as the frame of a house, just like the beams that hold up the walls.",
     "Do you know which bone is the longest in your body?"),
    ("teeth", "are", "Why do we lose baby teeth?",
     "Teeth help with chewing.",
     "Teeth are hard parts in the mouth that bite and chew food.",
     ["Children have twenty baby teeth.",
      "Baby teeth fall out to make room for bigger adult teeth.",
      "Brushing removes germs and sugar that can make holes in teeth."],
     "Think of your baby teeth as placeholders, keeping the seats warm until the grown-up teeth arrive.",
     "How many teeth have you lost so far?"),
    ("sleep", "is", "Why do we need sleep?",
     "Sleep is resting time.",
     "Sleep is a time when the body rests and the brain sorts the things it learned during the day.",
     ["Children need about ten hours of sleep each night.",
      "During sleep the body repairs itself and grows.",
      "Without enough sleep, it is hard to pay attention."],
     "Think of sleep as charging your battery, just like plugging in a tablet overnight so it's ready tomorrow.",
     "What do you like to dream about?"),
    ("germs", "are", "Why do germs make us sick?",
     "Germs are tiny living things.",
     "Germs are tiny living things, such as bacteria and viruses, that are too small to see.",
     ["Some germs cause colds, coughs and fevers.",
      "Washing hands with soap removes many germs.",
      "The body has defenders called white blood cells that fight germs."],
     "Imagine tiny invaders sneaking into a castle; your white blood cells are just like the knights that chase them away!",
     "Do you remember to wash your hands before you eat?"),
    ("soap", "is", "Why does soap clean our hands?",
     "Soap removes dirt.",
     "Soap is a cleaner whose tiny particles grab oil and dirt so water can wash them away.",
     ["One end of a soap particle sticks to water and the other end sticks to oil.",
      "Scrubbing helps soap trap dirt and germs in little bubbles.",
      "Water alone cannot wash away oily dirt."],
     "Think of soap as a team of tiny tow trucks that hook onto grease and drag it down the drain.",
     "Can you sing a whole song while you wash your hands?"),
    ("sound", "is", "Why can we hear sounds?",
     "Sound is vibration.",
     "Sound is a vibration that travels through air, water or solid things to our ears.",
     ["A drum makes sound when its skin shakes back and forth.",
      "Sound moves through air at about 340 meters every second.",
      "In space there is no air, so there is no sound."],
     "Imagine dropping a pebble in a pond and watching ripples spread; sound spreads through the air just like that.",
     "What is your favorite sound in the world?"),
    ("echoes", "are", "Why do echoes happen?",
     "Echoes are bouncing sounds.",
     "Echoes are sounds that bounce off a hard surface and come back to the listener.",
     ["Echoes are easiest to hear in caves, canyons and empty halls.",
      "Soft things such as curtains soak up sound and stop echoes.",
      "Ships use echoes to measure how deep the water is."],
     "It's like throwing a ball at a wall and catching it when it bounces back, only with your voice.",
     "Have you ever shouted your name into a canyon?"),
    ("light", "is", "Why can we see things?",
     "Light helps us see.",
     "Light is a form of energy that travels very fast and lets eyes see the world.",
     ["Light travels about 300,000 kilometers every second.",
      "Objects are seen when light bounces off them and enters the eye.",
      "White light is a mix of all the colors of the rainbow."],
     "Think of light as the fastest runner in the universe, able to circle the Earth seven times in one second!",
     "What do you think the world would look like without light?"),
    ("shadows", "are", "Why do shadows change size?",
     "Shadows are dark shapes.",
     "Shadows are dark areas made when an object blocks light.",
     ["Light travels in straight lines, so it cannot bend around most objects.",
      "Shadows are long in the morning and evening, when the sun is low.",
      "At noon, when the sun is high, shadows are short."],
     "Think of a shadow as a copy of you that stretches and shrinks just as the sun moves across the sky.",
     "Have you ever tried to jump on your own shadow?"),
    ("mirrors", "are", "Why do mirrors show our reflection?",
     "Mirrors reflect light.",
     "Mirrors are smooth, shiny surfaces that bounce light back almost perfectly.",
     ["Most mirrors are glass with a thin layer of metal behind it.",
      "A mirror image is flipped from left to right.",
      "Curved mirrors can make things look bigger or smaller."],
     "Imagine throwing a bouncy ball straight at a smooth wall; light bounces off a mirror just like that ball.",
     "Have you ever noticed that your mirror twin waves with the other hand?"),
    ("ice", "is", "Why does ice float?",
     "Ice is frozen water.",
     "Ice is water that has frozen solid at zero degrees Celsius.",
     ["Water grows a little bigger when it freezes.",
      "Ice is lighter than the same amount of liquid water, so it floats.",
      "Floating ice keeps lakes from freezing all the way to the bottom."],
     "Imagine water molecules holding hands in a wide circle when they freeze, taking up more space, just like a dance.",
     "What do you think would happen to fish if ice sank?"),
    ("the water cycle", "is", "Why doesn't the ocean run out of water?",
     "Water moving around the Earth.",
     "The water cycle is the way water moves from the ground to the sky and back again.",
     ["The sun warms water, and it rises into the air as vapor.",
      "The vapor cools and forms clouds.",
      "Water falls as rain or snow and flows back to rivers and oceans."],
     "Think of the water cycle as a never-ending ride, just like a merry-go-round for raindrops.",
     "Can you guess where the water in your glass was a year ago?"),
    ("oceans", "are", "Why is the ocean salty?",
     "Oceans are big salty waters.",
     "Oceans are huge bodies of salty water that cover about seventy percent of the Earth.",
     ["Rivers carry tiny amounts of salt from rocks into the sea.",
      "When sea water evaporates, the salt stays behind.",
      "The deepest part of the ocean is about eleven kilometers down."],
     "Imagine the sea is like a giant soup pot where rivers have been adding pinches of salt for millions of years.",
     "What sea creature would you most like to meet?"),
    ("tides", "are", "Why do tides go in and out?",
     "Tides are rising and falling seas.",
     "Tides are the daily rise and fall of the sea along the coast.",
     ["The moon's gravity pulls on the oceans and makes them bulge.",
      "Most beaches have two high tides and two low tides each day.",
      "The sun's gravity also changes the tides a little."],
     "Imagine the moon gently tugging a blanket of water back and forth across the Earth, just like a game of tug-of-war.",
     "Have you ever built a sandcastle and watched the tide wash it away?"),
    ("rivers", "are", "Why do rivers flow to the sea?",
     "Rivers are flowing water.",
     "Rivers are streams of fresh water that flow downhill from mountains and hills to the sea.",
     ["Rain and melting snow feed rivers.",
      "Over long times, rivers carve valleys and canyons.",
      "The Nile and the Amazon are among the longest rivers on Earth."],
     "Think of a river as a slide for water, always taking the quickest way downhill.",
     "Have you ever floated a leaf boat down a stream?"),
    ("deserts", "are", "Why are deserts so dry?",
     "Deserts are dry places.",
     "Deserts are places that get very little rain, usually less than 25 centimeters a year.",
     ["Some deserts are hot and sandy, and others are cold and icy.",
      "Desert plants such as cactuses store water in their stems.",
      "Many desert animals come out at night when it is cooler."],
     "Imagine a place where the sky almost never shares its water; plants there save every drop just like a piggy bank.",
     "How would you keep cool in a hot desert?"),
    ("mountains", "are", "Why are mountains so tall?",
     "Mountains are very high land.",
     "Mountains are land that rises high above the area around it.",
     ["Many mountains form when giant plates of the Earth's crust push together.",
      "The air on a high mountain is thin and cold.",
      "Mount Everest is the tallest mountain above sea level."],
     "Imagine pushing a rug against a wall until it wrinkles and bunches up; mountains form just like those wrinkles.",
     "Would you like to climb a mountain one day?"),
    ("the seasons", "are", "Why do we have seasons?",
     "Seasons change through the year.",
     "The seasons are the four parts of the year: spring, summer, autumn and winter.",
     ["The Earth is tilted as it travels around the sun.",
      "When one half tilts toward the sun, it gets more direct sunlight and summer.",
      "When that half tilts away, the days are shorter and winter comes."],
     "Imagine holding a flashlight straight over a table and then at a slant; the slanted light is weaker, just like winter sun.",
     "Which season is your favorite, and why?"),
    ("day and night", "are", "Why do we have day and night?",
     "The Earth spins.",
     "Day and night happen because the Earth spins around once every twenty-four hours.",
     ["The side of the Earth facing the sun has day.",
      "The side facing away from the sun has night.",
      "When it is night in one country, it is day on the other side of the world."],
     "Imagine a spinning ball in front of a lamp; the lit side is day, and it's just like the Earth turning in sunlight.",
     "What do you think kids on the other side of the world are doing right now?"),
    ("the center of the Earth", "is", "Why is the center of the Earth hot?",
     "The Earth's core is hot metal.",
     "The center of the Earth is a ball of hot metal, mostly iron and nickel, called the core.",
     ["The inner core is as hot as the surface of the sun.",
      "Huge pressure keeps the inner core solid.",
      "The liquid outer core makes the Earth's magnetic field."],
     "Think of the Earth like a peach: a thin skin, a thick soft middle and a hard pit at the center.",
     "How far do you think you could dig before it got too hot?"),
    ("air", "is", "Why can't we see air?",
     "Air is a mix of gases.",
     "Air is an invisible mix of gases, mostly nitrogen and oxygen, that surrounds the Earth.",
     ["Air has weight, even though it feels light.",
      "People and animals breathe in the oxygen from air.",
      "The layer of air around the Earth is called the atmosphere."],
     "Imagine the Earth wrapped in an invisible blanket, like a bubble that keeps us warm and lets us breathe.",
     "Have you ever felt air push on your hand out of a car window?"),
    ("oxygen", "is", "Why do we need oxygen?",
     "Oxygen is a gas we breathe.",
     "Oxygen is a gas in the air that people and animals need to stay alive.",
     ["The lungs take oxygen from the air and pass it into the blood.",
      "Cells use oxygen to turn food into energy.",
      "Plants release oxygen during photosynthesis."],
     "Think of oxygen as the spark your body needs to burn food for energy, just like a campfire needs air.",
     "Can you guess how many breaths you take in a day?"),
    ("recycling", "is", "Why is recycling important?",
     "Recycling reuses materials.",
     "Recycling is turning used materials, such as paper, glass and plastic, into new things.",
     ["Recycling saves trees, water and energy.",
      "Old bottles can be melted and made into new bottles.",
      "Less trash ends up in landfills when materials are recycled."],
     "Imagine your old cereal box getting a second life as a new book; recycling is just like a makeover for trash!",
     "What could you recycle at home today?"),
    ("worms", "are", "Why are worms good for soil?",
     "Worms live in soil.",
     "Worms are soft animals without legs that live in the soil.",
     ["Worms eat dead leaves and turn them into rich soil.",
      "Their tunnels let air and water reach plant roots.",
      "A worm breathes through its skin."],
     "Think of worms as tiny gardeners working underground, just like a team that never takes a day off.",
     "Have you ever seen worms come out after it rains?"),
    ("yeast", "is", "Why does bread rise?",
     "Yeast makes bread rise.",
     "Yeast is a tiny living fungus that bakers use to make bread dough rise.",
     ["Yeast eats sugar in the dough and makes carbon dioxide gas.",
      "The gas forms bubbles that puff up the dough.",
      "Baking stops the yeast and sets the bubbles in place."],
     "Imagine millions of tiny creatures blowing up balloons inside the dough; that's just like what yeast does.",
     "Have you ever watched bread dough grow in a bowl?"),
    ("rust", "is", "Why do old bikes get rusty?",
     "Rust is damaged iron.",
     "Rust is the reddish-brown flaky material that forms when iron meets water and oxygen.",
     ["Rust forms faster in wet and salty places.",
      "Paint and oil protect iron from rusting.",
      "Rust makes metal weak and crumbly over time."],
     "Think of rust as iron slowly getting a sunburn from water and air, just like skin without sunscreen.",
     "Can you find anything rusty around your home?"),
    ("bubbles", "are", "Why are bubbles round?",
     "Bubbles are air in a thin film.",
     "Bubbles are pockets of air wrapped in a very thin skin of soapy water.",
     ["A bubble is round because a sphere holds air with the least skin.",
      "The swirling colors come from light bouncing inside the thin film.",
      "Bubbles pop when the film dries out or gets too thin."],
     "Imagine a balloon made of soap, so thin that it shimmers with rainbow colors just like an oil puddle.",
     "What is the biggest bubble you have ever blown?"),
    ("popcorn", "is", "Why does popcorn pop?",
     "Popcorn is exploding corn.",
     "Popcorn is a kind of corn whose kernels burst open when they are heated.",
     ["Each kernel has a little drop of water inside.",
      "Heat turns the water into steam, and the pressure builds up.",
      "The hard shell bursts, and the soft inside puffs out."],
     "Imagine a tiny pressure cooker inside every kernel, building steam until pop, just like a little fireworks show!",
     "Do you like your popcorn salty or sweet?"),
    ("refrigerators", "are", "Why does a fridge keep food cold?",
     "Fridges keep food cold.",
     "Refrigerators are machines that move heat out of a box to keep food cold.",
     ["A special liquid flows through pipes and soaks up heat inside the fridge.",
      "The heat is let out through coils at the back.",
      "Cold slows down germs, so food stays fresh longer."],
     "Think of a fridge as a heat mover, just like a bucket carrying water out of a leaky boat.",
     "Have you felt the warm air behind your fridge?"),
    ("microwaves", "are", "Why does a microwave heat food?",
     "Microwaves heat food fast.",
     "Microwave ovens heat food with invisible waves that make water in the food jiggle.",
     ["The jiggling water rubs and warms up the food.",
      "Metal in a microwave can cause sparks.",
      "The plate turns so the food heats more evenly."],
     "Imagine millions of water molecules dancing so fast that they get warm, just like you do after jumping around!",
     "What is your favorite snack to warm up?"),
    ("airplanes", "are", "Why can airplanes fly?",
     "Airplanes fly with wings.",
     "Airplanes are flying machines that use wings and engines to travel through the air.",
     ["Engines push the plane forward very fast.",
      "The shape of the wings makes air push the plane up.",
      "Big passenger planes fly about ten kilometers above the ground."],
     "Imagine putting your hand out of a car window and tilting it; feel it lift? Wings work just like that.",
     "Where would you fly if you could go anywhere?"),
    ("floating", "is", "Why do boats float?",
     "Floating is staying on top of water.",
     "Floating happens when water pushes up on an object as hard as the object pushes down.",
     ["A heavy ship floats because its shape pushes aside a lot of water.",
      "A solid lump of metal sinks, but the same metal shaped as a bowl floats.",
      "Salty water helps things float more easily than fresh water."],
     "Imagine pressing a beach ball into a pool and feeling it push back up; water helps boats just like that.",
     "What toys have you tested to see if they float?"),
    ("bicycles", "are", "Why don't bicycles fall over?",
     "Bicycles have two wheels.",
     "Bicycles are machines with two wheels that a rider moves by pushing pedals.",
     ["The pedals turn a chain that spins the back wheel.",
      "Moving forward and steering help the rider stay balanced.",
      "Gears make it easier to ride up hills."],
     "Think of balancing a bike just like balancing a broom on your hand; small moves keep it standing.",
     "Do you remember the first time you rode without training wheels?"),
    ("wheels", "are", "Why are wheels round?",
     "Wheels help things roll.",
     "Wheels are round parts that turn around an axle and make moving things much easier.",
     ["A wheel rolls smoothly because every point on its edge is the same distance from the middle.",
      "The wheel was invented more than five thousand years ago.",
      "Wheels are found on cars, trains, carts and skateboards."],
     "Imagine trying to drag a heavy box versus rolling it on logs; the logs act just like wheels.",
     "How many wheels can you count on your way to school?"),
    ("computers", "are", "Why are computers so fast?",
     "Computers process information.",
     "Computers are machines that follow instructions to store and process information.",
     ["Computers work with only two numbers, zero and one.",
      "A chip called the processor can do billions of steps each second.",
      "Programs are lists of instructions written by people."],
     "Imagine a helper who follows a recipe perfectly, billions of steps a second; that's just like a computer.",
     "What would you program a computer to do for you?"),
    ("the internet", "is", "Why does the internet work?",
     "The internet connects computers.",
     "The internet is a giant network that connects computers all over the world.",
     ["Information travels as small packets through cables and radio waves.",
      "Undersea cables carry data between continents.",
      "Each device on the internet has its own address."],
     "Think of the internet as a huge postal service, sending millions of tiny letters every second, just like mail.",
     "What is the first website you ever visited?"),
    ("telephones", "are", "Why can telephones carry voices?",
     "Telephones carry voices far away.",
     "Telephones are devices that turn voices into signals and send them to another phone far away.",
     ["A microphone turns sound into electrical signals.",
      "The signals travel through wires or radio waves.",
      "A speaker at the other end turns the signals back into sound."],
     "It's like two tin cans connected by a string, only the string can stretch around the whole world!",
     "Who would you call first on a brand-new phone?"),
    ("batteries", "are", "Why do batteries run out?",
     "Batteries store energy.",
     "Batteries are containers that store chemical energy and release it as electricity.",
     ["Chemicals inside a battery react and push electrons through a circuit.",
      "When the chemicals are used up, the battery is empty.",
      "Rechargeable batteries can reverse the reaction when plugged in."],
     "Think of a battery as a tiny lunchbox of energy, just like a snack that a toy eats until it's gone.",
     "How many things in your home run on batteries?"),
    ("rockets", "are", "Why do rockets need so much fuel?",
     "Rockets fly into space.",
     "Rockets are vehicles that push hot gas out of the back to fly up into space.",
     ["Burning fuel makes a blast of gas that shoots downward.",
      "The gas pushing down makes the rocket move up.",
      "A rocket must travel very fast to escape the pull of the Earth."],
     "Imagine letting go of a blown-up balloon and watching it zoom away; rockets fly just like that, only much faster.",
     "Would you want to ride in a rocket?"),
    ("astronauts", "are", "Why do astronauts float in space?",
     "Astronauts travel in space.",
     "Astronauts are people trained to travel and work in space.",
     ["Astronauts float because they and their spacecraft are falling around the Earth together.",
      "They exercise every day to keep their muscles and bones strong.",
      "Spacesuits give them air and protect them from heat and cold."],
     "Imagine being on a roller coaster at the top of a drop, when your tummy floats; astronauts feel just like that all day.",
     "What would you eat first if you were an astronaut?"),
    ("space stations", "are", "Why do people live on space stations?",
     "Space stations orbit the Earth.",
     "Space stations are large spacecraft where astronauts live and work while circling the Earth.",
     ["The International Space Station circles the Earth about every ninety minutes.",
      "Astronauts there see about sixteen sunrises every day.",
      "Scientists on board do experiments that cannot be done on the ground."],
     "Think of a space station as a floating science camp, just like a tree house in the sky.",
     "What experiment would you do on a space station?"),
    ("black holes", "are", "Why can't light escape a black hole?",
     "Black holes are very strong gravity.",
     "Black holes are places in space where gravity is so strong that nothing, not even light, can escape.",
     ["Many black holes form when a huge star collapses.",
      "A giant black hole sits at the center of our galaxy.",
      "Scientists find black holes by watching the stars and gas around them."],
     "Imagine a cosmic drain so strong that even a flashlight beam gets sucked in, just like water down a bathtub.",
     "What do you think is inside a black hole?"),
    ("comets", "are", "Why do comets have tails?",
     "Comets are icy space rocks.",
     "Comets are balls of ice, dust and rock that travel around the sun.",
     ["When a comet comes close to the sun, its ice turns into gas.",
      "The gas and dust stream away to form a long glowing tail.",
      "The tail always points away from the sun."],
     "Think of a comet as a dirty snowball with a sparkly scarf streaming behind it, just like hair in the wind.",
     "Would you stay up late to watch a comet?"),
    ("eclipses", "are", "Why does the sun go dark in an eclipse?",
     "An eclipse is a blocked sun or moon.",
     "Eclipses happen when the moon blocks the sun, or the Earth's shadow falls on the moon.",
     ["In a solar eclipse, the moon passes between the sun and the Earth.",
      "In a lunar eclipse, the Earth's shadow makes the moon look dark red.",
      "Looking at the sun without special glasses harms the eyes."],
     "Imagine holding a coin in front of a lamp until it covers the light; the moon blocks the sun just like that.",
     "Have you ever seen the moon turn red?"),
    ("the Milky Way", "is", "Why is it called the Milky Way?",
     "Our galaxy.",
     "The Milky Way is the galaxy that holds the sun and hundreds of billions of other stars.",
     ["On a dark night, it appears as a pale band of light across the sky.",
      "The galaxy is shaped as a flat spiral with curling arms.",
      "Light takes about 100,000 years to cross it."],
     "Imagine a giant spinning pinwheel made of stars; our galaxy is just like that, and our sun is one tiny sparkle on one arm.",
     "Have you ever seen the Milky Way on a dark night?"),
    ("DNA", "is", "Why do children look like their parents?",
     "DNA is the body's instructions.",
     "DNA is a long molecule inside cells that holds the instructions for building a living thing.",
     ["Half of a child's DNA comes from each parent.",
      "DNA decides things such as eye color and hair color.",
      "The DNA in one cell would stretch about two meters if uncoiled."],
     "Think of DNA as a recipe book for your body, just like a cookbook that tells a cell what to make.",
     "Which features do you think you got from your family?"),
    ("cells", "are", "Why are living things made of cells?",
     "Cells are tiny building blocks.",
     "Cells are the tiny building blocks that make up every living thing.",
     ["The human body has trillions of cells.",
      "Different cells do different jobs, such as carrying oxygen or sending messages.",
      "Most cells are too small to see without a microscope."],
     "Think of your body as a giant city built from tiny bricks, and every brick is a busy little worker.",
     "What would you like to look at under a microscope?"),
    ("muscles", "are", "Why do muscles get tired?",
     "Muscles make the body move.",
     "Muscles are soft body tissues that pull on bones to make the body move.",
     ["The body has more than six hundred muscles.",
      "Muscles work in pairs: one pulls, and the other relaxes.",
      "Exercise makes muscles stronger."],
     "Think of your muscles as rubber bands that pull on the bones, just like strings on a puppet.",
     "Which muscles do you use when you smile?"),
    ("blood", "is", "Why is blood red?",
     "Blood carries oxygen.",
     "Blood is a red liquid that carries oxygen and food around the body.",
     ["Red blood cells contain iron, which gives blood its color.",
      "White blood cells fight germs.",
      "Platelets help a cut stop bleeding and form a scab."],
     "Imagine a delivery truck racing through tunnels, dropping off oxygen at every house; that's just like your blood.",
     "Have you ever watched a scab heal over a scrape?"),
    ("skin", "is", "Why do we have skin?",
     "Skin covers the body.",
     "Skin is the body's largest organ, and it covers and protects everything inside.",
     ["Skin keeps germs out and water in.",
      "Sweat from the skin cools the body on hot days.",
      "Skin replaces its outer layer about once a month."],
     "Think of skin as a raincoat, just like a suit of armor that also helps you feel hugs.",
     "Have you noticed goosebumps on your skin when you are cold?"),
    ("eyes", "are", "Why do we have two eyes?",
     "Eyes help us see.",
     "Eyes are organs that catch light and send pictures to the brain.",
     ["Light enters through the black hole in the middle called the pupil.",
      "The pupil grows bigger in the dark to let more light in.",
      "Two eyes help the brain judge how far away things are."],
     "Your eye works just like a tiny camera, and your brain is the computer that shows the photo.",
     "Can you see your pupils change size in a mirror?"),
    ("ears", "are", "Why do we have ears?",
     "Ears help us hear.",
     "Ears are organs that collect sound and send signals to the brain.",
     ["The outer ear catches sound waves and sends them inside.",
      "A thin eardrum shakes when sound reaches it.",
      "The inner ear also helps the body keep its balance."],
     "Think of your outer ear as a funnel that catches sound, just like a bowl catching rain.",
     "Can you cup your hands behind your ears and hear better?"),
    ("fingerprints", "are", "Why do we have fingerprints?",
     "Fingerprints are patterns on fingers.",
     "Fingerprints are the patterns of tiny ridges on the tips of the fingers.",
     ["No two people have the same fingerprints, not even twins.",
      "The ridges help fingers grip things.",
      "Police sometimes use fingerprints to find out who touched something."],
     "Imagine every person carrying a secret password on their fingertips, just like a one-of-a-kind barcode.",
     "Have you ever looked at your fingerprints with a magnifying glass?"),
    ("salt", "is", "Why does salt melt ice on roads?",
     "Salt is a mineral.",
     "Salt is a mineral made of sodium and chlorine, and people use it to flavor food.",
     ["Salt comes from the sea or from underground mines.",
      "Salt water freezes at a lower temperature than plain water.",
      "The body needs a small amount of salt to work well."],
     "Think of salt on an icy road as a party crasher that stops water from freezing together, just like a hug breaker.",
     "Have you ever tasted sea water by accident?"),
    ("sugar", "is", "Why does sugar taste sweet?",
     "Sugar is sweet food.",
     "Sugar is a sweet substance that plants make and the body uses for quick energy.",
     ["Most sugar comes from sugar cane or sugar beets.",
      "The tongue has taste buds that sense sweetness.",
      "Too much sugar can harm teeth."],
     "Imagine sugar as quick fuel for your body, just like a sprinkle of rocket fuel for a short race.",
     "What fruit do you think is the sweetest?"),
    ("coral reefs", "are", "Why are coral reefs important?",
     "Coral reefs are ocean structures.",
     "Coral reefs are underwater structures built by tiny animals called corals.",
     ["Corals build hard skeletons that pile up over thousands of years.",
      "About a quarter of all ocean fish live around reefs.",
      "Warm water can make corals lose their color and die."],
     "Imagine an underwater city where millions of tiny builders make the houses, just like a busy town for fish.",
     "Which reef animal would you want to see first?"),
    ("rainforests", "are", "Why do rainforests get so much rain?",
     "Rainforests are wet forests.",
     "Rainforests are thick forests in warm places that get rain almost every day.",
     ["Rainforests are home to more than half of the world's kinds of plants and animals.",
      "Tall trees form a roof of leaves called the canopy.",
      "Many medicines come from rainforest plants."],
     "Imagine a forest so busy that it's like a giant green apartment tower, with animals living on every floor.",
     "Which rainforest animal would you like to spot?"),
    ("penguins", "are", "Why can't penguins fly?",
     "Penguins are swimming birds.",
     "Penguins are birds that cannot fly but swim very well.",
     ["Their wings work as flippers underwater.",
      "A thick layer of fat and tight feathers keeps them warm.",
      "Most penguins live in the cold southern half of the world."],
     "Think of penguins as birds that traded the sky for the sea, flying underwater just like tiny torpedoes.",
     "Would you rather slide on your belly or swim like a penguin?"),
    ("camels", "are", "Why do camels have humps?",
     "Camels live in deserts.",
     "Camels are large animals that live in deserts and can go a long time without drinking.",
     ["A camel's hump stores fat, not water.",
      "Camels can drink over one hundred liters of water in a few minutes.",
      "Long eyelashes protect their eyes from blowing sand."],
     "Imagine carrying a backpack full of snacks for a long trip; a camel's hump is just like that backpack.",
     "How long do you think you could go without a drink?"),
    ("owls", "are", "Why can owls see in the dark?",
     "Owls are night birds.",
     "Owls are birds that hunt mostly at night.",
     ["Owls have huge eyes that gather a lot of light.",
      "They can turn their heads much farther than people can.",
      "Soft feathers let them fly almost silently."],
     "Imagine having eyes as big as flashlights and ears like radar; that's just like an owl on a night hunt.",
     "Have you ever heard an owl hooting at night?"),
    ("octopuses", "are", "Why do octopuses change color?",
     "Octopuses have eight arms.",
     "Octopuses are sea animals with eight arms and no bones.",
     ["An octopus can change the color of its skin to hide.",
      "It has three hearts and blue blood.",
      "Octopuses can squeeze through any hole bigger than their beak."],
     "Think of an octopus as a master of disguise, just like a superhero who can turn invisible.",
     "If you had eight arms, what would you do with them?"),
    ("honey", "is", "Why doesn't honey go bad?",
     "Honey is made by bees.",
     "Honey is a sweet, thick liquid that bees make from the nectar of flowers.",
     ["Bees fan the nectar with their wings to dry it out.",
      "Honey has so little water that germs cannot grow in it.",
      "Jars of honey thousands of years old have been found still good."],
     "Imagine bees as tiny chefs, turning flower juice into syrup just like cooks simmering a sauce.",
     "Do you like honey on toast?"),
    ("hiccups", "are", "Why do we get hiccups?",
     "Hiccups are sudden breaths.",
     "Hiccups are sudden jumps of the muscle under the lungs, called the diaphragm.",
     ["Each jump pulls in air that hits the voice box and makes the hic sound.",
      "Eating too fast or drinking fizzy drinks can cause hiccups.",
      "Most hiccups stop on their own after a few minutes."],
     "Imagine your breathing muscle getting a case of the jumps, just like a surprised kitten.",
     "What trick do you use to stop hiccups?"),
    ("yawning", "is", "Why do we yawn?",
     "Yawning is a big open-mouth breath.",
     "Yawning is taking a big, deep breath with the mouth open wide.",
     ["People yawn when they are tired or bored.",
      "A yawn may help lower the temperature of the brain.",
      "Seeing someone yawn often makes others yawn too."],
     "Think of a yawn as your body stretching from the inside, just like a cat after a nap.",
     "Did reading about yawns make you yawn?"),
    ("fire", "is", "Why does fire need air?",
     "Fire is burning.",
     "Fire is the heat and light given off when something burns.",
     ["Fire needs three things: fuel, heat and oxygen.",
      "Taking away any one of the three puts the fire out.",
      "Firefighters spray water to take heat away from the fuel and stop the flames."],
     "Imagine fire as a hungry triangle: take away one side, just like pulling one leg from a stool, and it falls.",
     "Do you know your family's fire safety plan?"),
    ("thermometers", "are", "Why do thermometers show the temperature?",
     "Thermometers measure heat.",
     "Thermometers are tools that measure how hot or cold something is.",
     ["Some thermometers have a liquid that rises when it warms up.",
      "Digital thermometers use a sensor that changes with heat.",
      "A healthy body is about 37 degrees Celsius."],
     "Think of a thermometer as a ruler for heat, just like a measuring tape for how warm things are.",
     "What is the hottest day you can remember?"),
]

# Held-out phrasings: prompt templates that never occur in sft.jsonl. Every topic is trained
# on; each topic's held-out prompt uses one of these templates (in turn), so the held-out set
# asks about seen topics in unseen words, and a model must read the topic out of the prompt.
TEST_TEMPLATES = ["Could you describe {name} for a kid?", "I want to learn about {name}.",
                  "Teach me about {name}, please."]
# Words that no topic owns: never a topic's fact word (see topic_sheet).
COMMON_WORDS = frozenset("""
about after also always around because been being below between body called cannot
different during each every first from give gives have help helps inside into keep keeps
kinds large like little long made make makes many more most much other people place places
same some something sometimes than that their them then there these they thing things those
through tiny very water what when where which while with without world years
would could should there their these those
""".split())

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "minirlhf" / "tasks" / "data" / "instruct"
SEED = 0
STYLE_WEIGHTS = {"engaging": 0.35, "dry": 0.30, "short": 0.15, "rambling": 0.20}
OPENERS = ["Hey there!", "Great question!", "Ooh, I love this one!", "Oh, this is a fun one!",
           "Wow, good one!", ""]
RAMBLE_OPEN = [
    "Well, {name} {be} a big subject, and there is a lot that could be said about {name}, so here goes.",
    "So, {name}. This is one of those things that people talk about a lot, and there are many, many details.",
    "Okay, so basically, {name} {be} something with quite a long story behind it, and the story goes on.",
]
RAMBLE_MIDDLE = [
    "Also, and this is important, and it is also something to remember, there is more to it.",
    "On top of that, there are other details too, and those details also matter quite a bit.",
    "And then, as well as all of that, there are even more things that are worth saying here.",
]
RAMBLE_CLOSE = [
    "Anyway, that is more or less the main idea, although there is always more to add.",
    "So that is about it, more or less, though of course a whole book could be written on it.",
    "In the end, that is the general picture, or at least a big part of it.",
]


def cap(s: str) -> str:
    return s[:1].upper() + s[1:]


# Training phrasings beyond the fixed styles: each topic is asked in PHRASINGS_PER_TOPIC of
# these (drawn with the seed), so a topic's name appears at many places in many sentences and a
# model must learn to read it out of whatever words surround it. None is a held-out template,
# but every word of the held-out templates occurs in some of them: the held-out prompts are new
# phrasings in words the model has read, as a pretrained model would have read them.
TRAIN_TEMPLATES = [
    "What can you tell me about {name}?", "Describe {name} in a few sentences.",
    "{Name}: how would you explain that to a child?", "Give me a simple explanation of {name}.",
    "Help me understand {name}.", "I am curious about {name}. What should I know?",
    "My little brother asked me about {name}. What do I say?", "Say something about {name}.",
    "What is the science behind {name}?", "Write a short explanation of {name} for a student.",
    "Please explain {name}.", "Quick question about {name}: what is going on there?",
    "What should a kid know about {name}?", "Could you talk about {name} for a minute?",
    "Explain {name} like I am five.", "Share a fun explanation of {name}.",
    # the words of the held-out phrasings (teach, learn, describe, please, kid), in other orders
    "What would you teach a class about {name}?", "I want to know more about {name}.",
    "Please describe {name} simply.", "We are learning about {name} at school. Can you help?",
    "Could you help a kid learn about {name}?", "Teach the basics of {name}, please.",
]
# A lead-in before some of them, so the topic's name moves further along the prompt.
LEADS = ["", "", "", "Hi! ", "Hey. ", "Hello there. ", "I have a question. ", "Okay, so: "]
PHRASINGS_PER_TOPIC = 10


def prompts_of(topic, rng: random.Random | None = None) -> list[str]:
    """The five prompt styles of one topic (the first is "Explain X to a 10-year-old."), then
    PHRASINGS_PER_TOPIC phrasings drawn from TRAIN_TEMPLATES when an rng is given."""
    name, be, why = topic[0], topic[1], topic[2]
    out = [f"Explain {name} to a 10-year-old.", f"What {be} {name}?", f"Tell me about {name}.",
           f"Can you explain {name} in simple words?", why]
    if rng is not None:
        out += [rng.choice(LEADS) + t.format(name=name, Name=cap(name))
                for t in rng.sample(TRAIN_TEMPLATES, PHRASINGS_PER_TOPIC)]
    return out


def n_words(text: str) -> int:
    return len(text.split())


def response(topic, style: str, rng: random.Random) -> str:
    name, be, _why, short, what, facts, analogy, question = topic
    if style == "engaging":
        parts = [rng.choice(OPENERS), what, analogy, facts[0], question]
        if n_words(" ".join(parts)) > 58:       # stay inside the judge's length band
            parts.remove(facts[0])
        return " ".join(p for p in parts if p)
    if style == "dry":
        parts = [what, facts[0], facts[1]]
        if n_words(" ".join(parts)) < 22:
            parts.append(facts[2])
        return " ".join(parts)
    if style == "short":
        return short
    if style == "rambling":
        fill = dict(name=name, be=be)
        parts = [rng.choice(RAMBLE_OPEN).format(**fill), what, facts[0],
                 rng.choice(RAMBLE_MIDDLE), facts[1], facts[2]]
        if rng.random() < 0.5:
            parts.append(analogy)
        parts += [rng.choice(RAMBLE_CLOSE), "In other words, to say it once more:", what]
        return cap(" ".join(parts))
    raise ValueError(f"unknown style {style!r}")


def draw_style(rng: random.Random, exclude: str | None = None) -> str:
    styles = [s for s in STYLE_WEIGHTS if s != exclude]
    return rng.choices(styles, weights=[STYLE_WEIGHTS[s] for s in styles])[0]


def build_sft(train_topics, rng):
    rows, styles = [], []
    for topic in train_topics:
        for i, prompt in enumerate(prompts_of(topic, rng)):
            style = draw_style(rng)
            rows.append({"prompt": prompt, "response": response(topic, style, rng)})
            styles.append(style)
            if i == 0:  # a second, different-quality demonstration of the "Explain" prompt
                second = draw_style(rng, exclude=style)
                rows.append({"prompt": prompt, "response": response(topic, second, rng)})
                styles.append(second)
    return rows, styles


def build_test(topics, rng):
    """One held-out prompt per topic, from TEST_TEMPLATES in turn, with an engaging reference."""
    return [{"prompt": TEST_TEMPLATES[i % len(TEST_TEMPLATES)].format(name=topic[0]),
             "topic": topic[0], "reference": response(topic, "engaging", rng)}
            for i, topic in enumerate(topics)]


def topic_sheet(topics) -> dict:
    """topics.json: for every topic its name words (the name minus "the" and COMMON_WORDS: "the
    water cycle" -> ["cycle"]) and its fact words:
    the words of 5+ letters of its definition and facts that occur in NO other topic's
    definition or facts (and are not COMMON_WORDS), so that naming one is evidence of that
    topic and of no other. The on-topic metric (minirlhf.tasks.instruct.on_topic) reads it."""
    from minirlhf.tasks.instruct import words

    def sheet_words(topic):
        return {w for text in (topic[4], *topic[5]) for w in words(text)
                if len(w) >= 5 and w not in COMMON_WORDS and "'" not in w}

    per_topic = {t[0]: sheet_words(t) for t in topics}
    count = {}
    for ws in per_topic.values():
        for w in ws:
            count[w] = count.get(w, 0) + 1
    out = {}
    for t in topics:
        name_words = [w for w in words(t[0]) if w != "the" and w not in COMMON_WORDS] or words(t[0])
        facts = sorted(w for w in per_topic[t[0]] if count[w] == 1 and w not in name_words)
        out[t[0]] = {"name": name_words, "facts": facts}
    return out


def build_pairs_text(rows) -> list[str]:
    """Each demonstration as a plain "prompt response" paragraph, so pretraining already sees
    a prompt followed by text about its topic."""
    return [f"{r['prompt']} {r['response']}" for r in rows]


def build_corpus(topics, rng, arrangements: int = 4, pairs=()) -> str:
    """Plain sentences about every topic: facts, "Why" questions with their answers, and
    the analogies and questions, in `arrangements` shuffled paragraph orders."""
    paragraphs = []
    for _ in range(arrangements):
        for topic in topics:
            name, be, why, short, what, facts, analogy, question = topic
            body = [what, *facts]
            rng.shuffle(body)
            paragraphs.append(" ".join(body))
            answer = [what, rng.choice(facts)]
            paragraphs.append(" ".join([why, *answer]))
            paragraphs.append(" ".join([analogy, short, question]))
    paragraphs += list(pairs)
    rng.shuffle(paragraphs)
    return "\n\n".join(paragraphs) + "\n"


def check_styles(rows, styles):
    """The dry pieces must not trip the judge's engaging/analogy/question detectors, and the
    styles must land where the module docstring says (in words)."""
    sys.path.insert(0, str(ROOT))
    from minirlhf.tasks.instruct import judge_components, words

    for topic in TOPICS:
        for text in (topic[3], topic[4], *topic[5]):
            c = judge_components("", text)
            if c["question"] or c["engaging"] or c["analogy"]:
                raise SystemExit(f"dry text of {topic[0]!r} trips the judge: {text!r} -> {c}")
        if not judge_components("", topic[7])["question"]:
            raise SystemExit(f"question of {topic[0]!r} is not a question: {topic[7]!r}")
        if not judge_components("", topic[6])["analogy"]:
            raise SystemExit(f"analogy of {topic[0]!r} has no analogy phrase: {topic[6]!r}")
    bands = {"engaging": (20, 60), "dry": (20, 60), "short": (1, 9), "rambling": (81, 200)}
    for row, style in zip(rows, styles):
        n = len(words(row["response"]))
        lo, hi = bands[style]
        if not lo <= n <= hi:
            raise SystemExit(f"{style} response of {n} words outside [{lo}, {hi}]: {row}")
    by_style = {}
    for row, style in zip(rows, styles):
        by_style.setdefault(style, []).append(judge_components(row["prompt"], row["response"])["score"])
    for style, scores in sorted(by_style.items()):
        print(f"  {style:9s} {len(scores):4d} rows, judge score mean {sum(scores) / len(scores):.3f} "
              f"(min {min(scores):.3f}, max {max(scores):.3f})")


def jsonl(rows) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="compare with the files on disk instead of writing them")
    args = parser.parse_args()

    names = [t[0] for t in TOPICS]
    assert len(set(names)) == len(names), "duplicate topic names"

    rng = random.Random(SEED)
    rows, styles = build_sft(TOPICS, rng)
    test_rows = build_test(TOPICS, rng)
    corpus = build_corpus(TOPICS, rng, arrangements=2, pairs=build_pairs_text(rows))
    check_styles(rows, styles)
    sheet = topic_sheet(TOPICS)
    bare = [n for n, v in sheet.items() if not v["facts"]]
    print(f"  topics.json: {len(sheet)} topics, {sum(len(v['facts']) for v in sheet.values())} fact words; "
          f"named only by their name: {bare}")

    files = {"sft.jsonl": jsonl(rows), "test_prompts.jsonl": jsonl(test_rows), "corpus.txt": corpus,
             "topics.json": json.dumps(sheet, indent=0, sort_keys=True) + "\n"}
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for fname, text in files.items():
        path = OUT_DIR / fname
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                raise SystemExit(f"{path} differs from a fresh generation; rerun without --check")
        else:
            path.write_text(text, encoding="utf-8")
        print(f"{path.relative_to(ROOT)}: {len(text.encode('utf-8')):,} bytes, "
              f"{text.count(chr(10)):,} lines")


if __name__ == "__main__":
    main()
